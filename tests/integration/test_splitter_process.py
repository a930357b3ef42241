"""The splitter as its own process: configured by environment, consuming from a real broker.

In a module of its own, so that no in-process splitter of another module consumes the same
DatasetVersioned on the side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.splitter.bootstrap import SERVICE_NAME
from shared.events import KafkaEventPublisher, ensure_topics, topic_for
from tests.fixtures.dataset_side import DatasetSide
from tests.fixtures.datasets import rotten_tomatoes_rows
from tests.fixtures.events import start_group_at_end
from tests.fixtures.waiting import wait_until_serving
from tuneline.client.splitter import SplitterClient
from tuneline.dataset.v1 import events_pb2 as dataset_events_pb2
from tuneline.devtools.kafka import free_port
from tuneline.splitter.v1 import events_pb2

pytestmark = pytest.mark.integration

DATASET_VERSIONED = topic_for(dataset_events_pb2.DatasetVersioned)


@pytest.fixture
def dataset_side(kafka_bootstrap: str, tmp_path: Path) -> Iterator[DatasetSide]:
    ensure_topics(kafka_bootstrap, [DATASET_VERSIONED, topic_for(events_pb2.SplitCreated)])
    publisher = KafkaEventPublisher(kafka_bootstrap, client_id="test-dataset-service")
    try:
        yield DatasetSide(
            kafka_bootstrap, tmp_path, publisher, rotten_tomatoes_rows(with_group=True)
        )
    finally:
        publisher.close()


def test_the_service_runs_as_its_own_process(dataset_side: DatasetSide, unique: str) -> None:
    group = f"test-splitter-process-{unique}"
    start_group_at_end(dataset_side.bootstrap, group, [DATASET_VERSIONED])
    port = free_port()
    env = {
        **os.environ,
        "TUNELINE_KAFKA_BOOTSTRAP": dataset_side.bootstrap,
        "TUNELINE_DATA_DIR": str(dataset_side.data_dir),
        "TUNELINE_SPLITTER_GRPC_PORT": str(port),
        "TUNELINE_SPLITTER_METRICS_PORT": str(free_port()),
        "TUNELINE_SPLITTER_CONSUMER_GROUP": group,
        "TUNELINE_LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.splitter.entrypoints.main"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(f"127.0.0.1:{port}", service=SERVICE_NAME, timeout=60)
        event = dataset_side.version(f"process-{unique}", dataset_side.reviews(300))
        dataset_side.announce(event)
        _, (created,) = dataset_side.split_events(event.dataset_version, expected=1, timeout=60)
        with SplitterClient(f"127.0.0.1:{port}") as splitter:
            assert splitter.get_split(created.split).manifest_sha256 == created.manifest_sha256
        assert (dataset_side.data_dir / "splitter" / "splitter.db").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    _, stderr = process.communicate(timeout=5)
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [line["split"] for line in logs if line["message"] == "split created"] == [created.split]
    assert all(line["service"] == "splitter" for line in logs)
