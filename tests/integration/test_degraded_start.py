"""The shared runtime without Kafka, and with a consumer loop that crashes.

The registry is the manual rollback path, so it must serve while the broker is down: it starts
with a bootstrap nobody listens on, reports SERVING, rolls back, and keeps the event in its
outbox until a registry with a broker publishes it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select

from services.registry.bootstrap import SERVICE_NAME, SPEC
from services.registry.settings import RegistrySettings
from shared.events import KafkaEventPublisher, OutboxEvent, ensure_topics, topic_for
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.events import read_published, start_group_at_end
from tests.fixtures.registry_events import (
    checkpoint_ready,
    evaluation_completed,
    model_definition,
    publish,
    registry_checkpoint,
)
from tuneline.client.registry import RegistryClient
from tuneline.devtools.kafka import free_port
from tuneline.devtools.waiting import eventually
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.registry.v1 import events_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events

pytestmark = pytest.mark.integration

CONSUMED = [
    topic_for(trainer_events.CheckpointReady),
    topic_for(evaluator_events.EvaluationCompleted),
    topic_for(evaluator_events.RegressionDetected),
]
ROLLED_BACK = topic_for(events_pb2.ModelRolledBack)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _registry(bootstrap: str, data_dir: Path, group: str, **common: Any) -> ServiceRuntime:
    runtime = build_runtime(
        SPEC,
        CommonSettings(kafka_bootstrap=bootstrap, data_dir=data_dir, **common),
        # the events name synthetic artifacts (tests/fixtures/registry_events.py)
        RegistrySettings(grpc_port=0, metrics_port=0, consumer_group=group, verify_artifacts=False),
    )
    runtime.start()
    return runtime


def _health(runtime: ServiceRuntime) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
        )
    return int(response.status)


def _pending_rollbacks(runtime: ServiceRuntime, model: str) -> list[OutboxEvent]:
    with runtime.context.sessions() as session:
        return list(
            session.scalars(
                select(OutboxEvent).where(
                    OutboxEvent.topic == ROLLED_BACK,
                    OutboxEvent.subject == model,
                    OutboxEvent.published_at.is_(None),
                )
            )
        )


@pytest.fixture
def registry_with_two_moves(
    kafka_bootstrap: str, tmp_path: Path
) -> tuple[Path, str, str, list[str]]:
    """A registry data dir whose model has had two checkpoints in production."""
    group = f"test-degraded-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [*CONSUMED, ROLLED_BACK])
    start_group_at_end(kafka_bootstrap, group, CONSUMED)
    runtime = _registry(kafka_bootstrap, tmp_path, group)
    model_id = f"m-{uuid.uuid4().hex[:10]}"
    model = f"models/{model_id}"
    publisher = KafkaEventPublisher(kafka_bootstrap, client_id="test-degraded-start")
    checkpoints = []
    try:
        with RegistryClient(f"127.0.0.1:{runtime.grpc_port}") as client:
            client.create_model(model_id, model_definition())
            for job in ("a", "b"):
                baseline = client.get_production_alias(model).checkpoint
                publish(publisher, checkpoint_ready(model_id, job, 100))
                publish(
                    publisher,
                    evaluation_completed(
                        model_id,
                        job,
                        100,
                        evaluation=f"evaluations/{model_id}-{job}",
                        baseline_checkpoint=baseline,
                    ),
                )
                name = registry_checkpoint(model_id, job, 100)
                eventually(
                    lambda n=name: client.get_production_alias(model).checkpoint == n,
                    timeout=120,
                    what=f"production at {name}",
                )
                checkpoints.append(name)
    finally:
        publisher.close()
        runtime.stop()
    return tmp_path, group, model, checkpoints


def test_the_registry_serves_and_rolls_back_without_kafka_and_publishes_later(
    kafka_bootstrap: str, registry_with_two_moves: tuple[Path, str, str, list[str]]
) -> None:
    data_dir, group, model, (first, second) = registry_with_two_moves
    closed = f"127.0.0.1:{free_port()}"  # nobody listens here

    runtime = _registry(closed, data_dir, group, kafka_start_wait_seconds=0)
    try:
        assert _health(runtime) == SERVING
        assert not runtime.kafka_ready.is_set(), "there was no broker to reach"
        with RegistryClient(f"127.0.0.1:{runtime.grpc_port}") as client:
            rolled = client.rollback_model(
                model, reason="broker outage drill", request_id="drill-1"
            )
            assert rolled.move.to_checkpoint == first
            assert client.get_production_alias(model).checkpoint == first
        [waiting] = _pending_rollbacks(runtime, model)
        assert waiting.parked_at is None, "an outage never parks an event"
    finally:
        runtime.stop()

    # Kafka is back (the service restarts with it): the event goes out, once.
    runtime = _registry(kafka_bootstrap, data_dir, group)
    try:
        eventually(
            lambda: not _pending_rollbacks(runtime, model), timeout=120, what="the outbox to drain"
        )
    finally:
        runtime.stop()
    # the outbox drained: every record there will be is on the broker
    records = read_published(kafka_bootstrap, ROLLED_BACK, lambda r: r.key == model.encode())
    assert len(records) == 1
    event = events_pb2.ModelRolledBack.FromString(records[0].value)
    assert (event.from_checkpoint, event.to_checkpoint) == (second, first)


def test_health_is_not_serving_while_the_consumer_loop_is_down(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = f"test-crash-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [*CONSUMED, ROLLED_BACK])
    runtime = _registry(kafka_bootstrap, tmp_path, group)
    consumer = runtime.consumer
    assert consumer is not None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=60
            )
            assert next(watch).status == SERVING
            crashed = []
            healthy_record_lag = consumer._record_lag

            def crash_once(kafka: Any) -> None:
                if not crashed:
                    crashed.append(True)
                    raise RuntimeError("injected crash in the consumer loop")
                healthy_record_lag(kafka)

            monkeypatch.setattr(consumer, "_record_lag", crash_once)
            assert next(watch).status == NOT_SERVING, "down after the crash"
            assert next(watch).status == SERVING, "back once it restarted and polled"
            watch.cancel()
        assert consumer.restarts == 1
    finally:
        runtime.stop()
