"""Trusted events on a real broker running SASL_SSL with SCRAM users and topic ACLs.

The module starts its own secured single-node broker (:class:`BrokerSecurity`: TLS from a local
CA, a SCRAM user per service, StandardAuthorizer denying what no ACL allows) and checks what
the issue's "Done means" asks: the dataset service's credentials cannot write the trainer's
CheckpointReady topic, the trainer's can; a wrong password and a plaintext client are refused;
a forged CheckpointReady the super user writes anyway reaches a real registry (logged in as the
registry, over SASL_SSL) and goes to the DLQ without moving production.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError, TopicAuthorizationFailedError

from services.registry.bootstrap import SPEC
from services.registry.settings import RegistrySettings
from shared.events import Envelope, KafkaEventPublisher, ensure_topics, topic_for
from shared.events.dead_letters import read_dead_letters
from shared.events.security import kafka_client_security
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.registry_events import checkpoint_ready, model_definition, registry_checkpoint
from tuneline.client import NotFoundError
from tuneline.client.registry import RegistryClient
from tuneline.devtools.kafka import BrokerSecurity, LocalKafka, free_port
from tuneline.devtools.waiting import eventually
from tuneline.registry.v1 import resources_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events

pytestmark = pytest.mark.integration

CHECKPOINT_READY = topic_for(trainer_events.CheckpointReady)
#: A safety net for a broken build, never a measure of speed.
WAIT_SECONDS = 120.0


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    home = tmp_path_factory.mktemp("secured-kafka")
    kafka = LocalKafka(
        home=home / "broker",
        port=free_port(),
        controller_port=free_port(),
        security=BrokerSecurity.ensure(home / "security"),
    )
    kafka.start(timeout=180)
    try:
        # the trainer creates the topics it owns, as its runtime does at start
        ensure_topics(kafka.bootstrap, [CHECKPOINT_READY], security=_as(kafka, "trainer"))
        yield kafka
    finally:
        kafka.stop()


def _security(kafka: LocalKafka) -> BrokerSecurity:
    assert kafka.security is not None
    return kafka.security


def _as(kafka: LocalKafka, user: str) -> dict[str, object]:
    """kafka-python settings of ``user`` through the service settings, as a service builds them."""
    return kafka_client_security(_common(kafka, user))


def _common(kafka: LocalKafka, user: str, **extra: Any) -> CommonSettings:
    env = _security(kafka).client_environment(user)
    return CommonSettings(
        kafka_bootstrap=kafka.bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_username=env["TUNELINE_KAFKA_USERNAME"],
        kafka_password_file=Path(env["TUNELINE_KAFKA_PASSWORD_FILE"]),
        kafka_ssl_cafile=Path(env["TUNELINE_KAFKA_SSL_CAFILE"]),
        **extra,
    )


def _checkpoint_envelope(source: str) -> Envelope:
    job = f"j-{uuid.uuid4().hex[:8]}"
    message = checkpoint_ready(f"m-{job}", job, 100)
    return Envelope.wrap(message, source=source, subject=f"trainingJobs/{job}/checkpoints/100")


def test_the_dataset_service_cannot_write_the_trainers_topic(secured_kafka):
    producer = KafkaProducer(
        bootstrap_servers=secured_kafka.bootstrap,
        client_id="test-dataset-as-trainer",
        max_block_ms=30_000,
        **_as(secured_kafka, "dataset"),
    )
    try:
        envelope = _checkpoint_envelope("tuneline/trainer")
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(CHECKPOINT_READY, value=envelope.payload, headers=envelope.headers()).get(
                timeout=30
            )
    finally:
        producer.close(timeout=5)


def test_the_trainer_writes_its_own_topic(secured_kafka):
    publisher = KafkaEventPublisher(
        secured_kafka.bootstrap, client_id="test-trainer", security=_as(secured_kafka, "trainer")
    )
    try:
        publisher.publish(_checkpoint_envelope("tuneline/trainer"))
    finally:
        publisher.close()


def test_a_wrong_password_does_not_log_in(secured_kafka):
    wrong = _security(secured_kafka).client_security("trainer", password="not-the-password")
    with pytest.raises(KafkaError):
        KafkaAdminClient(
            bootstrap_servers=secured_kafka.bootstrap,
            client_id="test-wrong-password",
            bootstrap_timeout_ms=10_000,
            **wrong,
        ).close()
    # the broker itself refused the login (not a network or TLS failure)
    eventually(
        lambda: (
            "invalid credentials with SASL mechanism SCRAM-SHA-512"
            in secured_kafka.server_log.read_text(errors="replace")
        ),
        timeout=WAIT_SECONDS,
        what="the broker's failed-authentication log line",
    )


def _handshakes_refused(kafka: LocalKafka) -> int:
    return kafka.server_log.read_text(errors="replace").count("(SSL handshake failed)")


def test_a_plaintext_client_cannot_talk_to_the_sasl_ssl_listener(secured_kafka):
    before = _handshakes_refused(secured_kafka)
    with pytest.raises(KafkaError):
        KafkaAdminClient(
            bootstrap_servers=secured_kafka.bootstrap,
            client_id="test-plaintext",
            bootstrap_timeout_ms=10_000,
        ).close()
    # the listener was up and insisted on TLS
    eventually(
        lambda: _handshakes_refused(secured_kafka) > before,
        timeout=WAIT_SECONDS,
        what="the broker's failed-handshake log line",
    )


@pytest.fixture(scope="module")
def registry(
    secured_kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceRuntime]:
    """The registry, logged in to Kafka as its own SCRAM user (default group tuneline-registry)."""
    runtime = build_runtime(
        SPEC,
        _common(
            secured_kafka,
            "registry",
            data_dir=tmp_path_factory.mktemp("registry"),
            auth_mode="insecure",
        ),
        RegistrySettings(grpc_port=0, metrics_port=0, verify_artifacts=False),
    )
    runtime.start()
    try:
        eventually(runtime.kafka_ready.is_set, timeout=WAIT_SECONDS, what="registry topics")
        assert runtime.consumer is not None
        eventually(
            lambda: runtime.consumer and runtime.consumer.ready.is_set(),
            timeout=WAIT_SECONDS,
            what="registry consumer assigned",
        )
        yield runtime
    finally:
        runtime.stop()


def test_a_forged_checkpoint_written_past_the_acls_goes_to_the_dlq(secured_kafka, registry):
    """The super user (an ACL mistake, a leaked admin password) writes a CheckpointReady
    claiming to come from the dataset service: the registry's consumer, logged in as the
    registry, dead-letters it (its own DLQ ACL) and registers nothing."""
    model_id = f"m-{uuid.uuid4().hex[:10]}"
    with RegistryClient(f"127.0.0.1:{registry.grpc_port}") as client:
        client.create_model(
            model_id, model_definition(policy=resources_pb2.PROMOTION_POLICY_AUTOMATIC)
        )
        job = f"forged-{model_id}"
        message = checkpoint_ready(model_id, job, 100)
        subject = getattr(message, message.DESCRIPTOR.fields[0].name)
        admin = _security(secured_kafka)
        forger = KafkaEventPublisher(
            secured_kafka.bootstrap,
            client_id="test-forger",
            security=admin.client_security(admin.admin),
        )
        try:
            forger.publish(Envelope.wrap(message, source="tuneline/dataset", subject=subject))
        finally:
            forger.close()

        def dead_letter() -> Any:
            letters = read_dead_letters(
                secured_kafka.bootstrap,
                CHECKPOINT_READY,
                security=admin.client_security(admin.admin),
            )
            return next((d for d in letters if d.key == subject.encode()), None)

        dead = eventually(dead_letter, timeout=WAIT_SECONDS, what="the forged event in the DLQ")
        assert dead.header("dlq_consumer_group") == "tuneline-registry"
        assert "is not 'tuneline/trainer'" in (dead.header("dlq_error") or "")
        assert client.get_production_alias(f"models/{model_id}").checkpoint == ""
        with pytest.raises(NotFoundError):
            client.get_checkpoint(registry_checkpoint(model_id, job, 100))
