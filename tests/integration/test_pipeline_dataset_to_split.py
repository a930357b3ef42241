"""Dataset and splitter as separate processes on a real broker: upload → DatasetVersioned →
SplitCreated, with the split's manifest checked against the uploaded rows.

Twice: on the default backends (SQLite files, local artifact folders; id ``sqlite``) and on the
shared ones a multi-node deployment uses (a PostgreSQL database per service and S3 artifact
roots on a real S3-compatible server; id ``postgresql``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from shared.artifacts import artifact_store_from_uri
from shared.events import Envelope, topic_for
from tests.fixtures.datasets import rotten_tomatoes_rows, to_jsonl
from tests.fixtures.events import read_records, start_group_at_end
from tests.fixtures.postgresql import fresh_postgresql_database
from tests.fixtures.waiting import wait_until_serving
from tuneline.client.dataset import DatasetClient
from tuneline.client.splitter import SplitterClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2 as dataset_events
from tuneline.devtools.kafka import free_port
from tuneline.splitter.v1 import events_pb2 as splitter_events

pytestmark = pytest.mark.integration


def _start(service: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{service}.entrypoints.main"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def backends(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The storage settings of both services: none (the defaults), or PostgreSQL + S3."""
    if request.param == "sqlite":
        yield {}
        return
    admin_url = request.getfixturevalue("postgresql_admin_url")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    settings = {
        "TUNELINE_S3_ENDPOINT_URL": endpoint,
        **{name: os.environ[name] for name in os.environ if name.startswith("AWS_")},
    }
    with ExitStack() as stack:
        for service in ("dataset", "splitter"):
            url = stack.enter_context(fresh_postgresql_database(admin_url))
            settings[f"TUNELINE_{service.upper()}_DATABASE_URL"] = url
            settings[f"TUNELINE_{service.upper()}_ARTIFACT_ROOT"] = f"s3://{bucket}/{service}"
        yield settings


def test_upload_drives_a_split_across_processes(kafka_bootstrap, tmp_path, backends):
    run = uuid.uuid4().hex[:8]
    group = f"tuneline-splitter-pipeline-{run}"
    start_group_at_end(kafka_bootstrap, group, [topic_for(dataset_events.DatasetVersioned)])
    ports = {name: (free_port(), free_port()) for name in ("dataset", "splitter")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELINE_")}
    env |= {
        "TUNELINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TUNELINE_DATA_DIR": str(tmp_path / "data"),
        "TUNELINE_SPLITTER_CONSUMER_GROUP": group,
        "TUNELINE_DATASET_VALIDATION_WORKERS": "0",
        "TUNELINE_AUTH_MODE": "insecure",  # explicit: the environment above was cleared
        **backends,
    }
    for name, (grpc_port, metrics_port) in ports.items():
        env[f"TUNELINE_{name.upper()}_GRPC_PORT"] = str(grpc_port)
        env[f"TUNELINE_{name.upper()}_METRICS_PORT"] = str(metrics_port)
    env["TUNELINE_SPLITTER_DATASET_TARGET"] = f"127.0.0.1:{ports['dataset'][0]}"
    processes = {
        name: _start(name, env, tmp_path / f"{name}.log") for name in ("dataset", "splitter")
    }
    try:
        for name, process in processes.items():
            wait_until_serving(
                f"127.0.0.1:{ports[name][0]}",
                timeout=90,
                process=process,
                log=tmp_path / f"{name}.log",
            )

        rows = rotten_tomatoes_rows(2000, with_group=True)
        dataset_id = f"reviews-{run}"
        with DatasetClient(f"127.0.0.1:{ports['dataset'][0]}") as datasets:
            datasets.create_dataset(dataset_id, "classification")
            uploaded = datasets.upload_dataset_version(
                f"datasets/{dataset_id}", to_jsonl(rows, newline="\r\n")
            )
        version = uploaded.dataset_version
        assert uploaded.created
        assert version.row_count == len(rows)

        [versioned] = read_records(
            kafka_bootstrap,
            topic_for(dataset_events.DatasetVersioned),
            lambda r: r.key == version.name.encode(),
            expected=1,
        )
        assert (
            Envelope.from_headers(versioned.headers, versioned.value)
            .decode(dataset_events.DatasetVersioned)
            .content_sha256
            == version.content_sha256
        )
        [record] = read_records(
            kafka_bootstrap,
            topic_for(splitter_events.SplitCreated),
            lambda r: (
                splitter_events.SplitCreated.FromString(r.value).dataset_version == version.name
            ),
            expected=1,
            timeout=60,
        )
        created = Envelope.from_headers(record.headers, record.value).decode(
            splitter_events.SplitCreated
        )
        assert created.dataset_content_sha256 == version.content_sha256
        assert created.overlap_count == 0
        counts = {p.part: p.row_count for p in created.parts}
        assert sum(counts.values()) == len(rows)
        assert 0.7 < counts[common_pb2.SPLIT_PART_TRAIN] / len(rows) < 0.9, "default 80/20"

        # read back as another process would: through the store the URIs belong to
        store = artifact_store_from_uri(
            backends.get("TUNELINE_SPLITTER_ARTIFACT_ROOT", tmp_path / "reader"),
            readable_roots=[tmp_path / "data"],
            s3_endpoint_url=backends.get("TUNELINE_S3_ENDPOINT_URL"),
            cache_dir=tmp_path / "cache",
        )
        assert created.manifest_uri.startswith("s3://" if backends else "file://")
        manifest_bytes = store.materialize(created.manifest_uri).read_bytes()
        assert hashlib.sha256(manifest_bytes).hexdigest() == created.manifest_sha256
        manifest = json.loads(manifest_bytes)
        with store.open(version.artifact_uri) as handle:
            canonical = [json.loads(line) for line in handle.read().decode().splitlines()]
        group_of = {row["id"]: row["group"] for row in canonical}
        train = {group_of[i] for i in manifest["parts"]["train"]}
        validation = {group_of[i] for i in manifest["parts"]["validation"]}
        assert not train & validation, "no movie straddles train and validation"

        with SplitterClient(f"127.0.0.1:{ports['splitter'][0]}") as splits:
            assert splits.get_split(created.split).manifest_sha256 == created.manifest_sha256
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
