"""Kafka down at service start, on a real service process: the manual rollback path still works.

The registry is how a person rolls production back, so it must start and serve while no broker
answers. Here a registry *process* (as ``tuneline up`` starts it) is pointed at a loopback port
where no broker listens yet: it reaches SERVING, answers RollbackModel (the outbox keeps
ModelRolledBack), and when a broker starts on that port the same process creates its topics and
publishes the event once. The checker counts what the client was told (one rollback) against
what reached the topic. ``tests/integration/test_degraded_start.py`` covers the in-process
runtime (and a restart with the broker); this is the same promise on a process whose broker
comes back under it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest

from services.registry.settings import RegistrySettings
from tests.fixtures.events import read_published
from tests.integration.test_degraded_start import (  # noqa: F401 - the fixture, reused
    ROLLED_BACK,
    registry_with_two_moves,
)
from tuneline.client.registry import RegistryClient
from tuneline.devtools.kafka import LocalKafka, free_port
from tuneline.devtools.stack import LocalStack, StackPorts
from tuneline.devtools.waiting import eventually
from tuneline.registry.v1 import events_pb2

pytestmark = pytest.mark.integration


def _pending_rollbacks(database: Path, model: str) -> int:
    """ModelRolledBack rows of ``model`` the registry's outbox has not sent (read beside the
    running process: SQLite in WAL mode lets it)."""
    with sqlite3.connect(database, timeout=30) as connection:
        [(count,)] = connection.execute(
            "SELECT count(*) FROM outbox_events"
            " WHERE topic = ? AND subject = ? AND published_at IS NULL",
            (ROLLED_BACK, model),
        )
    return int(count)


def test_a_registry_process_started_without_kafka_rolls_back_and_publishes_once_it_is_up(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data_dir, group, model, (first, second) = request.getfixturevalue("registry_with_two_moves")
    port, controller_port = free_port(), free_port()
    while controller_port == port:
        controller_port = free_port()
    bootstrap = f"127.0.0.1:{port}"  # nobody listens here until the broker below starts

    stack = LocalStack(
        tmp_path / "stack",
        StackPorts.free(),
        kafka_bootstrap=bootstrap,
        services=["registry"],
    )
    shutil.copytree(data_dir, stack.data_dir)  # the registry with two production moves
    prefix = RegistrySettings.model_config.get("env_prefix", "")
    env = {
        **os.environ,
        f"{prefix}CONSUMER_GROUP": group,
        f"{prefix}VERIFY_ARTIFACTS": "false",  # the events named synthetic artifacts
    }
    kafka = LocalKafka(home=tmp_path / "kafka", port=port, controller_port=controller_port)
    state = stack.up(timeout=180, env=env)  # waits for SERVING: without any broker
    try:
        [registry] = state.services
        database = stack.data_dir / "registry" / "registry.db"
        with RegistryClient(registry.target) as client:
            rolled = client.rollback_model(
                model, reason="broker outage drill", request_id=f"drill-{uuid.uuid4().hex[:8]}"
            )
            assert rolled.move.to_checkpoint == first
            assert client.get_production_alias(model).checkpoint == first
        assert _pending_rollbacks(database, model) == 1, "the outbox keeps the acknowledged event"

        kafka.start(timeout=180)  # the broker comes up where the registry looks for it
        eventually(
            lambda: _pending_rollbacks(database, model) == 0,
            timeout=180,
            what="the registry's relay publishing the rollback to the new broker",
        )
        assert stack.first_exited() is None, "the same process published it"
        # the outbox holds nothing more: every record there will be is on the broker
        records = read_published(
            bootstrap, ROLLED_BACK, lambda r: getattr(r, "key", None) == model.encode()
        )
    finally:
        stack.down()
        kafka.stop()

    # the checker: one rollback acknowledged, one ModelRolledBack on the topic
    assert len(records) == 1, f"{len(records)} ModelRolledBack records for one rollback"
    event = events_pb2.ModelRolledBack.FromString(records[0].value)  # type: ignore[attr-defined]
    assert (event.from_checkpoint, event.to_checkpoint) == (second, first)
