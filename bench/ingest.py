"""Dataset ingest throughput against a bare parse-and-hash baseline, and the service's memory.

Generates a JSONL file of classification rows (``--size-mb``, default 200; texts of 40 to
2,000 characters drawn from the real Rotten Tomatoes vocabulary, every row distinct), then, in
the same run and on the same file:

* **baseline**: read the file line by line, ``hashlib.sha256`` every line, ``json.loads`` every
  line — the least any ingest must do;
* **upload**: the full path — ``DatasetClient.upload_dataset_version`` over gRPC on loopback to the
  dataset service running as its own process (validate, canonicalise, hash, spool to the
  artifact store, commit the version, stage ``DatasetVersioned``), until the response; then
  until the event is on the broker.

Each is run ``--repeat`` times, alternating, and the best run of each counts (the machine may
be shared). Printed: MB/s of each, their ratio (goal >= 0.5), and the service's peak RSS —
``VmHWM`` of the service process and the peak of the sum over it and its validation worker
processes, sampled every 20 ms (goal < 300 MB for a 1 GB upload: ``--size-mb 1024``).

    .venv/bin/python bench/ingest.py [--size-mb 200] [--workers N] [--repeat 2] [--store s3]

``--store s3`` puts the service's artifact store on S3: an S3-compatible server on loopback, as
its own process (goal >= 0.4 there, for the extra upload and the copy to the content-addressed
key). By default that is s3s-fs, a compiled server (``tuneline.devtools.s3_server``: built once
with cargo), whose own CPU time is small, as a remote S3's is nothing to the service's host;
``--s3-server moto`` runs moto's standalone server, the tests' server, instead: a Python server
that takes about as much of the two cores as the service does.

Needs a Kafka broker: ``--bootstrap`` or ``TUNELINE_KAFKA_BOOTSTRAP``, else a local KRaft
broker is started (``tuneline dev kafka`` provisions its jars).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
from kafka import KafkaConsumer

from services.dataset.settings import DatasetSettings
from shared.events import ensure_topics, topic_for
from shared.events.tail import consumer_at_end
from tests.fixtures.datasets import rotten_tomatoes_rows
from tuneline.client import UnavailableError
from tuneline.client.dataset import DatasetClient, dataset_name
from tuneline.dataset.v1 import events_pb2
from tuneline.devtools.kafka import LocalKafka, free_port
from tuneline.devtools.s3_server import s3s_fs_server
from tuneline.devtools.waiting import answer, eventually

GOAL_RATIO = {"local": 0.5, "s3": 0.4}
GOAL_RSS_BYTES_PER_GB = 300 * 1024 * 1024
TOPIC = topic_for(events_pb2.DatasetVersioned)
LABELS = ("positive", "negative", "neutral")


# -- data ---------------------------------------------------------------------------------------


def generate(path: Path, size_mb: int, seed: int = 7) -> int:
    """Write at least ``size_mb`` MB of distinct JSONL rows; returns the row count.

    Words are drawn as often as they occur in the real reviews (so about one row in three
    carries a curly quote, a dash or an accent, as real text does), texts run from one to six
    sentences (about 40 to 1,500 characters), and a serial number keeps every row distinct.
    """
    rng = random.Random(seed)
    words = [word for row in rotten_tomatoes_rows() for word in row["text"].split()]
    pool = [" ".join(rng.choices(words, k=rng.randint(6, 40))) for _ in range(20_000)]
    target = size_mb * 1_000_000
    written = rows = 0
    with path.open("w", encoding="utf-8") as handle:
        while written < target:
            lines = []
            for _ in range(1000):
                text = " ".join(rng.choices(pool, k=rng.randint(1, 6)))
                row = {"text": f"{text} #{rows}", "label": LABELS[rows % 3]}
                if rows % 10 == 0:
                    row["group"] = f"g{rows % 5000}"
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
                rows += 1
            chunk = "".join(lines)
            handle.write(chunk)
            written += len(chunk.encode())
    return rows


# -- baseline -----------------------------------------------------------------------------------


@dataclass
class BaselineTiming:
    seconds: float
    cpu_seconds: float


def baseline(path: Path) -> BaselineTiming:
    """Read, sha256 and json.loads every line of ``path``: wall and CPU seconds."""
    started, cpu = time.perf_counter(), time.process_time()
    digest = hashlib.sha256()
    loads = json.loads
    with path.open("rb") as handle:
        for line in handle:
            digest.update(line)
            loads(line)
    return BaselineTiming(time.perf_counter() - started, time.process_time() - cpu)


# -- the service --------------------------------------------------------------------------------


@dataclass
class Service:
    process: psutil.Process
    target: str
    peak_tree_rss: int = 0
    sampling: bool = True

    def sample(self) -> None:
        processes: list[psutil.Process] = []
        tick = 0
        while self.sampling:
            try:
                # listing the children scans all of /proc: a few times a second is enough to
                # see the workers start, and leaves the CPUs to what is measured
                if tick % 25 == 0:
                    processes = [self.process, *self.process.children(recursive=True)]
                tick += 1
                total = 0
                for process in processes:
                    with contextlib.suppress(psutil.Error):
                        total += process.memory_info().rss
                self.peak_tree_rss = max(self.peak_tree_rss, total)
            except psutil.Error:
                return
            time.sleep(0.02)

    def cpu_seconds(self) -> dict[int, float]:
        """CPU seconds (user + system) so far of the service process and each worker, by pid."""
        seconds = {}
        for process in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seconds[process.pid] = times.user + times.system
        return seconds

    def main_peak_rss(self) -> int:
        """``VmHWM``: the kernel's record of the service process's peak resident set."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        return kib * 1024


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's standalone server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    # its own process, as a real S3 server would be: not a thread of the benchmark's process,
    # whose CPU (and interpreter lock) the upload's client needs
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


@contextlib.contextmanager
def s3_store_settings(server: str, scratch: Path) -> Iterator[dict[str, str]]:
    """The dataset service's settings for an artifact store on a loopback S3 server."""
    import boto3  # noqa: PLC0415 - dev extras, only for --store s3
    from botocore.config import Config  # noqa: PLC0415
    from botocore.exceptions import EndpointConnectionError  # noqa: PLC0415

    credentials = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    running: contextlib.AbstractContextManager[str] = (
        moto_server() if server == "moto" else s3s_fs_server(scratch / "s3", "bench", "bench")
    )
    with running as endpoint:
        client = boto3.session.Session(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
        ).client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
        eventually(
            answer(lambda: client.create_bucket(Bucket="bench"), EndpointConnectionError),
            timeout=120,
            what="the S3 server to start",
        )
        yield {
            **credentials,
            "TUNELINE_S3_ENDPOINT_URL": endpoint,
            "TUNELINE_DATASET_ARTIFACT_ROOT": "s3://bench/dataset",
        }


@contextlib.contextmanager
def dataset_service(
    bootstrap: str, data_dir: Path, workers: int, store: dict[str, str]
) -> Iterator[Service]:
    port = free_port()
    env = {
        **os.environ,
        **store,
        "TUNELINE_KAFKA_BOOTSTRAP": bootstrap,
        "TUNELINE_DATA_DIR": str(data_dir),
        "TUNELINE_LOG_LEVEL": "WARNING",
        # a loopback benchmark of the service itself, not of TLS (bench/authz_overhead.py)
        "TUNELINE_AUTH_MODE": "insecure",
        "TUNELINE_DATASET_GRPC_PORT": str(port),
        "TUNELINE_DATASET_METRICS_PORT": str(free_port()),
        "TUNELINE_DATASET_VALIDATION_WORKERS": str(workers),
        "TUNELINE_DATASET_MAX_UPLOAD_BYTES": str(8 * 1024**3),
        # the label audit runs after the answer, on its own: left on, one run's audit (an
        # encoder over every row) takes the CPUs the next run and baseline are measured on
        "TUNELINE_DATASET_LABEL_AUDIT_ENABLED": "false",
    }
    popen = subprocess.Popen(
        [sys.executable, "-m", "services.dataset.entrypoints.main"],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    service = Service(psutil.Process(popen.pid), f"127.0.0.1:{port}")
    sampler = threading.Thread(target=service.sample, daemon=True)
    sampler.start()
    try:
        with DatasetClient(service.target, timeout=5) as client:
            # start-up (imports, migrations, the broker) is not measured: a loaded machine may
            # take minutes
            eventually(
                answer(lambda: list(client.list_datasets()) or True, UnavailableError),
                timeout=600,
                what="the dataset service to start",
                poll=0.2,
            )
        yield service
    finally:
        service.sampling = False
        popen.terminate()
        try:
            popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # it drains first: the label audit of the uploaded version may still be running,
            # and its result is not what this measures
            popen.kill()
            popen.wait()


def wait_for_event(consumer: KafkaConsumer, version: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=100).values():
            if any(record.key == version.encode() for record in records):
                return
    raise TimeoutError(f"no DatasetVersioned for {version}")


@dataclass
class UploadTiming:
    response_seconds: float
    event_seconds: float
    rows: int
    #: CPU seconds the service process and its workers spent on the upload.
    service_cpu_seconds: float
    workers_cpu_seconds: float
    #: CPU seconds this process (the client: read, hash and send the file) spent on it.
    client_cpu_seconds: float


def upload(service: Service, bootstrap: str, path: Path) -> UploadTiming:
    dataset = f"bench-{uuid.uuid4().hex[:10]}"
    consumer = consumer_at_end(bootstrap, [TOPIC])
    try:
        with DatasetClient(service.target) as client:
            client.create_dataset(dataset, "classification")
            cpu_before = service.cpu_seconds()
            client_cpu = time.process_time()
            started = time.perf_counter()
            response = client.upload_dataset_version(dataset_name(dataset), path, timeout=3600)
            answered = time.perf_counter()
            client_cpu = time.process_time() - client_cpu
            cpu_after = service.cpu_seconds()
            wait_for_event(consumer, response.dataset_version.name)
            evented = time.perf_counter()
    finally:
        consumer.close()
    spent = {pid: cpu - cpu_before.get(pid, 0.0) for pid, cpu in cpu_after.items()}
    main_cpu = spent.pop(service.process.pid)
    return UploadTiming(
        answered - started,
        evented - started,
        response.dataset_version.row_count,
        main_cpu,
        sum(spent.values()),
        client_cpu,
    )


# -- the run ------------------------------------------------------------------------------------


def run(bootstrap: str, args: argparse.Namespace) -> bool:
    ensure_topics(bootstrap, [TOPIC])
    if args.workers is None:  # the service's default, as it will compute it
        args.workers = DatasetSettings.model_fields["validation_workers"].get_default(
            call_default_factory=True
        )
    with tempfile.TemporaryDirectory(prefix="tuneline-bench-ingest-") as scratch:
        root = Path(scratch)
        data = root / "upload.jsonl"
        started = time.perf_counter()
        rows = generate(data, args.size_mb)
        size = data.stat().st_size
        mb = size / 1e6
        print(
            f"generated {mb:,.0f} MB, {rows:,} rows ({size / rows:,.0f} bytes a row) "
            f"in {time.perf_counter() - started:.0f} s"
        )
        baselines: list[BaselineTiming] = []
        uploads: list[UploadTiming] = []
        store_settings: contextlib.AbstractContextManager[dict[str, str]] = (
            s3_store_settings(args.s3_server, root)
            if args.store == "s3"
            else contextlib.nullcontext({})
        )
        with (
            store_settings as store,
            dataset_service(bootstrap, root / "service", args.workers, store) as service,
        ):
            for attempt in range(args.repeat):
                baselines.append(baseline(data))
                uploads.append(upload(service, bootstrap, data))
                latest = uploads[-1]
                print(
                    f"  run {attempt + 1}: baseline {mb / baselines[-1].seconds:6.1f} MB/s, "
                    f"upload {mb / latest.response_seconds:6.1f} MB/s (event on the broker "
                    f"{latest.event_seconds - latest.response_seconds:.2f} s after the answer)"
                )
            main_peak = service.main_peak_rss()
        tree_peak = service.peak_tree_rss
    assert all(u.rows == rows for u in uploads)
    best_baseline = mb / min(b.seconds for b in baselines)
    best_upload = mb / min(u.response_seconds for u in uploads)
    ratio = best_upload / best_baseline
    goal = GOAL_RATIO[args.store]
    baseline_cpu = min(b.cpu_seconds for b in baselines) / mb
    service_cpu = min(u.service_cpu_seconds for u in uploads) / mb
    workers_cpu = min(u.workers_cpu_seconds for u in uploads) / mb
    client_cpu = min(u.client_cpu_seconds for u in uploads) / mb
    rss_goal = GOAL_RSS_BYTES_PER_GB * max(1.0, size / 1e9)
    print(f"baseline (read + sha256 + json.loads): {best_baseline:7.1f} MB/s")
    store = f"s3 ({args.s3_server})" if args.store == "s3" else args.store
    print(f"upload over gRPC (validate, hash, store on {store}, event): {best_upload:7.1f} MB/s")
    print(f"ratio: {ratio:.2f} (goal >= {goal})")
    # what the same work gives when nobody else wants the CPUs: the service process and each
    # worker on a core of its own, against the baseline on one
    projected = 1 / service_cpu
    if args.workers and workers_cpu:
        projected = min(projected, args.workers / workers_cpu)
    print(
        f"CPU per MB: baseline {baseline_cpu * 1e3:.1f} ms; upload {service_cpu * 1e3:.1f} ms "
        f"in the service process + {workers_cpu * 1e3:.1f} ms in its workers "
        f"(+ {client_cpu * 1e3:.1f} ms in the client, this process)"
    )
    print(
        f"  with a free CPU for the service and each worker: ~{projected:.0f} MB/s, "
        f"ratio ~{projected * baseline_cpu:.2f} against the baseline's CPU time"
    )
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(
        f"service peak RSS: {main_peak / 2**20:,.0f} MiB service process (VmHWM), "
        f"{tree_peak / 2**20:,.0f} MiB with its {args.workers} validation worker(s) (sampled)"
    )
    if size >= 1e9:
        print(f"RSS goal for a 1 GB upload: < {GOAL_RSS_BYTES_PER_GB / 2**20:.0f} MiB")
        return ratio >= goal and tree_peak < rss_goal
    return ratio >= goal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="JSONL size (1024 for 1 GB)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="validation worker processes (default: the service's, one more than the CPUs)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best counts")
    parser.add_argument(
        "--store", choices=sorted(GOAL_RATIO), default="local", help="the artifact store"
    )
    parser.add_argument(
        "--s3-server",
        choices=["s3s-fs", "moto"],
        default="s3s-fs",
        help="the loopback S3 server for --store s3 (s3s-fs: compiled, built once with cargo)",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("TUNELINE_KAFKA_BOOTSTRAP"),
        help="Kafka bootstrap servers (default: start a local broker)",
    )
    args = parser.parse_args()
    if args.bootstrap:
        ok = run(args.bootstrap, args)
    else:
        with tempfile.TemporaryDirectory(prefix="tuneline-bench-kafka-") as kafka_home:
            kafka = LocalKafka(home=Path(kafka_home), port=free_port(), controller_port=free_port())
            kafka.start(timeout=180)
            try:
                ok = run(kafka.bootstrap, args)
            finally:
                kafka.stop()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
