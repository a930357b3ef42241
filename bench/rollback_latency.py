"""Rollback latency: from a trigger to ModelRolledBack arriving at a Kafka consumer.

With the registry running as its own process on a real broker, each trial sets up a fresh
model, promotes two checkpoints through events (CheckpointReady + EvaluationCompleted, as the
trainer and evaluator publish them), then triggers a rollback and times it end to end:

* ``regression``: publish a RegressionDetected about the production checkpoint;
* ``webhook``: POST Alertmanager's webhook JSON for the model (bearer token, real HTTP).

The clock starts right before the publish / POST and stops when a consumer assigned to
``tuneline.registry.v1.ModelRolledBack`` receives the record. The registry's own share (commit
time minus trigger time, from the event's ``event_time`` - ``trigger_time``) is printed beside
it. Goal: p99 under 1 second on loopback.

    .venv/bin/python bench/rollback_latency.py [--trials 50] [--bootstrap 127.0.0.1:19092]

Without ``--bootstrap`` (or ``TUNELINE_KAFKA_BOOTSTRAP``) a local KRaft broker is started.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from shared.events import KafkaEventPublisher, ensure_topics, topic_for
from shared.events.tail import consumer_at_end
from tests.fixtures.events import start_group_at_end
from tests.fixtures.registry_events import (
    checkpoint_ready,
    evaluation_completed,
    model_definition,
    publish,
    registry_checkpoint,
    regression_detected,
)
from tuneline.client.alerts import alertmanager_notification
from tuneline.client.registry import RegistryClient
from tuneline.devtools.kafka import LocalKafka, free_port
from tuneline.devtools.waiting import answer, eventually
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.registry.v1 import events_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events

GOAL_P99_SECONDS = 1.0
TOKEN = "bench-webhook-token"
ROLLED_BACK = topic_for(events_pb2.ModelRolledBack)
CONSUMED = [
    topic_for(trainer_events.CheckpointReady),
    topic_for(evaluator_events.EvaluationCompleted),
    topic_for(evaluator_events.RegressionDetected),
]


class RollbackWatcher:
    """A consumer of ModelRolledBack that timestamps each record the moment it arrives."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = consumer_at_end(bootstrap, [ROLLED_BACK])
        self._arrivals: dict[str, tuple[float, events_pb2.ModelRolledBack]] = {}
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for batch in self._consumer.poll(timeout_ms=100).values():
                arrived = time.perf_counter()
                with self._condition:
                    for record in batch:
                        self._arrivals[record.key.decode()] = (
                            arrived,
                            events_pb2.ModelRolledBack.FromString(record.value),
                        )
                    self._condition.notify_all()
        self._consumer.close()

    def wait_for(
        self, model: str, timeout: float = 30.0
    ) -> tuple[float, events_pb2.ModelRolledBack]:
        with self._condition:
            if not self._condition.wait_for(lambda: model in self._arrivals, timeout):
                raise TimeoutError(f"no ModelRolledBack for {model} within {timeout} s")
            return self._arrivals[model]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@contextlib.contextmanager
def registry_process(
    bootstrap: str, data_dir: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, str]]:
    """Run the registry as its own process (``extra_env`` on top); yields (gRPC target,
    webhook URL)."""
    grpc_port, webhook_port = free_port(), free_port()
    group = f"bench-registry-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [*CONSUMED, ROLLED_BACK, topic_for(events_pb2.ModelPromoted)])
    start_group_at_end(bootstrap, group, CONSUMED)
    env = {
        **os.environ,
        "TUNELINE_KAFKA_BOOTSTRAP": bootstrap,
        "TUNELINE_DATA_DIR": str(data_dir),
        "TUNELINE_LOG_LEVEL": "WARNING",
        # a loopback benchmark of the service itself, not of TLS (bench/authz_overhead.py)
        "TUNELINE_AUTH_MODE": "insecure",
        "TUNELINE_REGISTRY_GRPC_PORT": str(grpc_port),
        "TUNELINE_REGISTRY_METRICS_PORT": "0",
        "TUNELINE_REGISTRY_WEBHOOK_PORT": str(webhook_port),
        "TUNELINE_REGISTRY_WEBHOOK_TOKEN": TOKEN,
        "TUNELINE_REGISTRY_CONSUMER_GROUP": group,
        # the events name synthetic artifacts (tests/fixtures/registry_events.py)
        "TUNELINE_REGISTRY_VERIFY_ARTIFACTS": "false",
        **(extra_env or {}),
    }
    log = (data_dir / "registry.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.registry.entrypoints.main"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{webhook_port}/v1/alerts"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def wait_until_serving(client: RegistryClient, timeout: float = 60.0) -> None:
    def lists_models() -> bool:
        list(client.list_models(page_size=1))
        return True

    # any error is "not yet": the process is still importing, migrating, binding its port
    eventually(
        answer(lists_models, Exception), timeout=timeout, what="the registry to start", poll=0.2
    )


def set_up_two_promotions(
    client: RegistryClient, publisher: KafkaEventPublisher, model_id: str
) -> str:
    """Create a model and promote checkpoints a then b through events; returns b's name."""
    return promote_in_turn(client, publisher, model_id, ("a", "b"))


def promote_in_turn(
    client: RegistryClient, publisher: KafkaEventPublisher, model_id: str, jobs: Sequence[str]
) -> str:
    """Create a model and promote one checkpoint per job in turn, through events (as the
    trainer and evaluator do); returns the last one's name."""
    client.create_model(model_id, model_definition())

    def in_production(checkpoint: str) -> bool:
        return client.get_production_alias(f"models/{model_id}").checkpoint == checkpoint

    production = ""
    for job in jobs:
        publish(publisher, checkpoint_ready(model_id, job, 100))
        publish(
            publisher,
            evaluation_completed(
                model_id,
                job,
                100,
                evaluation=f"evaluations/{model_id}-{job}",
                baseline_checkpoint=production,
            ),
        )
        production = registry_checkpoint(model_id, job, 100)
        eventually(
            functools.partial(in_production, production),
            timeout=30,
            what=f"{production} promoted",
            poll=0.01,
        )
    return production


def post(url: str, body: object) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def nearest_rank(values: list[float], quantile: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


def report(name: str, end_to_end: list[float], in_registry: list[float]) -> bool:
    p50, p99 = statistics.median(end_to_end), nearest_rank(end_to_end, 0.99)
    ok = p99 < GOAL_P99_SECONDS
    print(
        f"{name:<10} n={len(end_to_end):<3} "
        f"p50 {p50 * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms   "
        f"max {max(end_to_end) * 1000:7.1f} ms"
        f"   | trigger→commit in registry p50 {statistics.median(in_registry) * 1000:6.1f} ms"
        f"   goal p99 < {GOAL_P99_SECONDS * 1000:.0f} ms: {'PASS' if ok else 'FAIL'}"
    )
    return ok


def run(bootstrap: str, trials: int) -> bool:
    with (
        tempfile.TemporaryDirectory(prefix="rollback-bench-") as home,
        registry_process(bootstrap, Path(home)) as (grpc_target, webhook_url),
    ):
        publisher = KafkaEventPublisher(bootstrap, client_id="bench-rollback")
        watcher = RollbackWatcher(bootstrap)
        try:
            with RegistryClient(grpc_target, timeout=30) as client:
                wait_until_serving(client)
                # one untimed warm-up: the consumer group joins, connections open
                warm = f"warm-{uuid.uuid4().hex[:8]}"
                set_up_two_promotions(client, publisher, warm)
                publish(
                    publisher,
                    regression_detected(warm, "b", 100, evaluation=f"evaluations/{warm}-r"),
                )
                watcher.wait_for(f"models/{warm}", timeout=60)
                results: dict[str, tuple[list[float], list[float]]] = {
                    "regression": ([], []),
                    "webhook": ([], []),
                }
                for trial in range(trials):
                    for kind, (end_to_end, in_registry) in results.items():
                        model_id = f"bench-{kind[:3]}-{trial}-{uuid.uuid4().hex[:6]}"
                        set_up_two_promotions(client, publisher, model_id)
                        started = time.perf_counter()
                        if kind == "regression":
                            publish(
                                publisher,
                                regression_detected(
                                    model_id, "b", 100, evaluation=f"evaluations/{model_id}-r"
                                ),
                            )
                        else:
                            outcome = post(
                                webhook_url,
                                alertmanager_notification(
                                    model_id,
                                    fingerprint=uuid.uuid4().hex[:16],
                                    starts_at=datetime.now(UTC),
                                ),
                            )
                            assert outcome["alerts"][0]["outcome"] == "rolled_back", outcome  # type: ignore[index]
                        arrived, event = watcher.wait_for(f"models/{model_id}")
                        end_to_end.append(arrived - started)
                        in_registry.append(
                            (
                                event.event_time.ToDatetime(UTC)
                                - event.trigger_time.ToDatetime(UTC)
                            ).total_seconds()
                        )
        finally:
            watcher.close()
            publisher.close()
    print(f"rollback latency, trigger → ModelRolledBack at a consumer ({trials} trials each)")
    verdicts = [report(kind, *values) for kind, values in results.items()]
    return all(verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--bootstrap", default=os.environ.get("TUNELINE_KAFKA_BOOTSTRAP"))
    args = parser.parse_args()
    if args.bootstrap:
        ok = run(args.bootstrap, args.trials)
    else:
        with tempfile.TemporaryDirectory(prefix="rollback-bench-kafka-") as kafka_home:
            kafka = LocalKafka(home=Path(kafka_home), port=free_port(), controller_port=free_port())
            kafka.start(timeout=180)
            try:
                ok = run(kafka.bootstrap, args.trials)
            finally:
                kafka.stop()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
