"""Serving throughput: the serving service's Predict against a bare forward loop.

All sides classify the same texts, one at a time (batch 1, as live traffic arrives), with the
same loaded model (a base model plus a LoRA adapter, loaded by the serving service's own
loader) in the same run:

* **bare**: ``tokenizer(text)`` and ``model(...)`` under ``torch.inference_mode()``, argmax;
* **core**: :func:`services.serving.handlers.inference.predict` — the model lookup under the
  swap lock, encoding, forward, softmax, the prediction remembered for feedback, metrics;
* **grpc**: ``ServingClient.predict`` against a real gRPC server (loopback, plaintext) running
  the serving servicer: everything above plus the wire, the interceptors and the protobufs.

Model loading is excluded. Each side runs ``--repeat`` times, alternating, and the best run
counts (the machine may be shared). Printed: requests per second of each, the ratios to bare
(goal: >= 0.8) and the p50/p99 latency of a gRPC Predict at batch 1.

    .venv/bin/python bench/serving_throughput.py [--requests 300] [--repeat 3] [--device cpu]

:func:`measure_serving_throughput` is what ``bench/parity.py`` calls for its serving figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from prometheus_client import CollectorRegistry

from services.serving.adapters.engine import TorchModel
from services.serving.adapters.metrics import ServingMetrics
from services.serving.domain import (
    FeedbackLedger,
    PredictionMemory,
    Release,
    ReportOutcome,
    ServedModel,
    ServingTable,
)
from services.serving.entrypoints.grpc_api import ServingServicer
from services.serving.handlers import inference
from services.serving.handlers.deps import ServingDeps
from shared.grpc import GrpcServerMetrics, ServerSecurity, ServiceRegistration, build_grpc_server
from shared.modeling import default_models_root, folder_sha256
from shared.modeling.loading import load_checkpoint, resolve_device
from shared.modeling.packaged import ENCODER, prepare_packaged_models
from shared.task_types import TaskType
from tests.fixtures.adapters import train_classification_adapter
from tests.fixtures.trainer_data import rotten_tomatoes_rows
from tuneline.client.serving import ServingClient
from tuneline.serving.v1 import service_pb2, service_pb2_grpc

MODEL = "models/bench"


@dataclass(frozen=True)
class ServingThroughput:
    """Requests per second at batch 1, ratios to the bare loop, gRPC latency percentiles."""

    device: str
    requests: int
    bare_per_second: float
    core_per_second: float
    grpc_per_second: float
    core_ratio: float
    grpc_ratio: float
    grpc_p50_ms: float
    grpc_p99_ms: float


def _unused(*_args: object) -> None:
    raise AssertionError("the bench never fetches, loads or reports")


class _NoRegistry:
    def report(self, _batch: object) -> ReportOutcome:
        return ReportOutcome.ACCEPTED


def _deps(served: ServedModel) -> ServingDeps:
    table = ServingTable([MODEL])
    table.swap(served)
    return ServingDeps(
        table=table,
        predictions=PredictionMemory(100_000),
        ledger=FeedbackLedger(),
        fetcher=_unused,  # type: ignore[arg-type]
        loader=_unused,  # type: ignore[arg-type]
        sink=_NoRegistry(),
        metrics=ServingMetrics(CollectorRegistry()),
        clock=lambda: datetime.now(UTC),
        new_id=lambda: uuid.uuid4().hex,
    )


def _timed(run: Callable[[str], object], texts: Sequence[str]) -> tuple[float, list[float]]:
    """Seconds for all texts, and each request's latency."""
    latencies = []
    started = time.perf_counter()
    for text in texts:
        begun = time.perf_counter()
        run(text)
        latencies.append(time.perf_counter() - begun)
    return time.perf_counter() - started, latencies


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure_serving_throughput(
    adapter_dir: Path,
    texts: Sequence[str],
    *,
    models_root: Path | None = None,
    requests: int = 300,
    repeat: int = 3,
    device: str | None = None,
) -> ServingThroughput:
    """Predict throughput of the serving core and of gRPC against a bare loop, batch 1, on a
    classification checkpoint folder (``adapter_dir``), over ``requests`` of ``texts``."""
    target = resolve_device(device)
    loaded = load_checkpoint(
        adapter_dir, models_root=models_root or default_models_root(), device=target
    )
    if loaded.metadata is None or loaded.metadata.task is not TaskType.CLASSIFICATION:
        raise ValueError("Predict serves classification checkpoints")
    model, tokenizer, max_length = loaded.model, loaded.tokenizer, loaded.metadata.max_seq_length
    release = Release(
        model=MODEL,
        checkpoint=f"{MODEL}/checkpoints/bench",
        revision=1,
        artifact_uri=adapter_dir.as_uri(),
        sha256=folder_sha256(adapter_dir),
        task=TaskType.CLASSIFICATION,
    )
    deps = _deps(ServedModel(release, TorchModel(loaded), datetime.now(UTC)))
    chosen = [texts[i % len(texts)] for i in range(requests)]

    def bare(text: str) -> int:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            logits = model(
                input_ids=encoded["input_ids"].to(target),
                attention_mask=encoded["attention_mask"].to(target),
            ).logits
        return int(logits[0].argmax())

    def core(text: str) -> object:
        return inference.predict(deps, MODEL, text)

    server = build_grpc_server(
        host="127.0.0.1",
        port=0,
        services=[
            ServiceRegistration(
                service_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name,
                ServingServicer(deps),
                service_pb2_grpc.add_ServingServiceServicer_to_server,
            )
        ],
        metrics=GrpcServerMetrics(CollectorRegistry()),
        security=ServerSecurity.insecure(),
        grace_seconds=0,
    )
    server.start()
    client = ServingClient(f"127.0.0.1:{server.port}", timeout=60)
    try:

        def over_grpc(text: str) -> object:
            return client.predict(MODEL, text)

        for run in (bare, core, over_grpc):  # warm-up: allocator, kernels, the channel
            _timed(run, chosen[:20])
        best: dict[str, float] = {}
        grpc_latencies: list[float] = []
        for _ in range(repeat):
            for name, run in (("bare", bare), ("core", core), ("grpc", over_grpc)):
                seconds, latencies = _timed(run, chosen)
                if seconds < best.get(name, float("inf")):
                    best[name] = seconds
                    if name == "grpc":
                        grpc_latencies = latencies
    finally:
        client.close()
        server.stop(0)
    per_second = {name: requests / seconds for name, seconds in best.items()}
    return ServingThroughput(
        device=str(target),
        requests=requests,
        bare_per_second=round(per_second["bare"], 1),
        core_per_second=round(per_second["core"], 1),
        grpc_per_second=round(per_second["grpc"], 1),
        core_ratio=round(per_second["core"] / per_second["bare"], 3),
        grpc_ratio=round(per_second["grpc"] / per_second["bare"], 3),
        grpc_p50_ms=round(statistics.median(grpc_latencies) * 1000, 2),
        grpc_p99_ms=round(_percentile(grpc_latencies, 0.99) * 1000, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if any)")
    parser.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="a classification checkpoint folder "
        "(default: a LoRA adapter on the packaged encoder, made here)",
    )
    args = parser.parse_args()
    models_root = default_models_root()
    texts = [row["text"] for row in rotten_tomatoes_rows(200)]
    with tempfile.TemporaryDirectory() as folder:
        adapter = args.adapter
        if adapter is None:
            prepare_packaged_models(models_root, names=(ENCODER,))
            adapter = train_classification_adapter(
                models_root=models_root,
                base_model_name=ENCODER,
                rows=[],
                labels=("fresh", "rotten"),
                out=Path(folder) / "adapter",
                steps=0,
            )
        result = measure_serving_throughput(
            adapter,
            texts,
            models_root=models_root,
            requests=args.requests,
            repeat=args.repeat,
            device=args.device,
        )
    print(json.dumps(asdict(result), indent=2))
    verdict = "meets" if min(result.core_ratio, result.grpc_ratio) >= 0.8 else "MISSES"
    print(f"serving/bare: core {result.core_ratio}x, gRPC {result.grpc_ratio}x ({verdict} 0.8x)")


if __name__ == "__main__":
    main()
