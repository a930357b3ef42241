"""Kafka client security from settings, the per-service topic ACLs, and the secured local
broker's configuration (no broker; tests/integration/test_kafka_security.py runs one)."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import MagicMock

import pytest
from kafka.admin import ACLOperation, ResourceType

from services.evaluator.entrypoints.subscriptions import evaluator_subscriptions
from services.registry.entrypoints.subscriptions import registry_subscriptions
from services.serving.entrypoints.subscriptions import subscriptions as serving_subscriptions
from services.splitter.entrypoints.events import subscriptions as splitter_subscriptions
from services.trainer.entrypoints.events import subscriptions as trainer_subscriptions
from shared.events.acls import (
    EVENT_CONSUMERS,
    SERVICES,
    service_acls,
    service_topic_grants,
)
from shared.events.producers import EVENT_PRODUCERS
from shared.events.security import KafkaSecurityError, kafka_client_security
from shared.settings import CommonSettings
from tuneline.devtools.kafka import BrokerSecurity, LocalKafka

CHECKPOINT_READY = "tuneline.trainer.v1.CheckpointReady"


# -- settings → kafka-python -------------------------------------------------------------------


def test_plaintext_adds_nothing() -> None:
    assert kafka_client_security(CommonSettings()) == {}


def test_sasl_ssl_reads_the_password_file_and_checks_the_broker(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = CommonSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_username="registry",
        kafka_password="ignored-when-a-file-is-set",
        kafka_password_file=password,
        kafka_ssl_cafile=ca,
    )
    assert kafka_client_security(settings) == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": str(ca),
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "registry",
        "sasl_plain_password": "s3cret",
    }


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TUNELINE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("TUNELINE_KAFKA_USERNAME", "trainer")
    monkeypatch.setenv("TUNELINE_KAFKA_PASSWORD", "pw")
    config = kafka_client_security(CommonSettings())
    assert config["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("trainer", "pw")
    assert "ssl_cafile" not in config  # the system roots


def test_ssl_with_a_client_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("c")
    key.write_text("k")
    config = kafka_client_security(
        CommonSettings(
            kafka_security_protocol="SSL", kafka_ssl_certfile=cert, kafka_ssl_keyfile=key
        )
    )
    assert config == {
        "security_protocol": "SSL",
        "ssl_check_hostname": True,
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
    }


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs TUNELINE_KAFKA_USERNAME"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_username": "registry"},
            "TUNELINE_KAFKA_PASSWORD_FILE",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_username": "registry",
                "kafka_password_file": Path("/nonexistent/password"),
            },
            "cannot be read",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": Path("/nonexistent/ca.pem")},
            "TUNELINE_KAFKA_SSL_CAFILE /nonexistent/ca.pem is not a file",
        ),
    ],
)
def test_unusable_settings_fail_at_start(settings: dict[str, object], message: str) -> None:
    with pytest.raises(KafkaSecurityError, match=message):
        kafka_client_security(CommonSettings(**settings))  # type: ignore[arg-type]


def test_a_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("c")
    with pytest.raises(KafkaSecurityError, match="go together"):
        kafka_client_security(
            CommonSettings(kafka_security_protocol="SSL", kafka_ssl_certfile=cert)
        )


# -- who may write and read what ------------------------------------------------------------


def test_the_consumer_table_is_what_each_service_subscribes_to() -> None:
    deps = MagicMock()
    subscribed = {
        "dataset": [],  # its wiring subscribes to nothing
        "splitter": splitter_subscriptions(deps),
        "trainer": trainer_subscriptions(deps, deps),
        "evaluator": evaluator_subscriptions(deps),
        "registry": registry_subscriptions(deps),
        "serving": serving_subscriptions(deps, deps),
    }
    assert set(subscribed) == set(SERVICES) == set(EVENT_CONSUMERS)
    for service, subscriptions in subscribed.items():
        assert {s.topic for s in subscriptions} == EVENT_CONSUMERS[service], service


def test_only_the_trainer_may_write_checkpoint_ready() -> None:
    writers = [s for s in SERVICES if CHECKPOINT_READY in service_topic_grants(s).writes]
    assert writers == ["trainer"]
    # its consumers may read it and dead-letter it, nothing more
    for service in ("evaluator", "registry"):
        grants = service_topic_grants(service)
        assert CHECKPOINT_READY in grants.reads
        assert f"{CHECKPOINT_READY}.dlq" in grants.writes


def test_every_event_topic_has_exactly_its_producer_as_writer() -> None:
    for topic, source in EVENT_PRODUCERS.items():
        writers = {s for s in SERVICES if topic in service_topic_grants(s).writes}
        assert writers == {source.removeprefix("tuneline/")}, topic


def test_service_acls_allow_writes_reads_and_the_group_only() -> None:
    acls = service_acls(service_topic_grants("registry"))
    assert {a.principal for a in acls} == {"User:registry"}
    writes = {a.resource_pattern.resource_name for a in acls if a.operation == ACLOperation.WRITE}
    assert writes == {
        "tuneline.registry.v1.ModelPromoted",
        "tuneline.registry.v1.ModelRolledBack",
        f"{CHECKPOINT_READY}.dlq",
        "tuneline.evaluator.v1.EvaluationCompleted.dlq",
        "tuneline.evaluator.v1.RegressionDetected.dlq",
    }
    groups = [a for a in acls if a.resource_pattern.resource_type == ResourceType.GROUP]
    assert [(g.resource_pattern.resource_name, g.operation) for g in groups] == [
        ("tuneline-registry", ACLOperation.READ)
    ]
    # the dataset service consumes nothing: no group, no reads
    dataset = service_acls(service_topic_grants("dataset"))
    assert not [a for a in dataset if a.operation == ACLOperation.READ]


def test_an_unknown_service_has_no_grants() -> None:
    with pytest.raises(ValueError, match="unknown service"):
        service_topic_grants("billing")


# -- the secured local broker ---------------------------------------------------------------


def test_a_secured_broker_listens_sasl_ssl_only_with_deny_by_default(tmp_path: Path) -> None:
    security = BrokerSecurity.ensure(tmp_path / "security")
    kafka = LocalKafka(
        home=tmp_path / "home",
        port=29092,
        controller_port=29093,
        cache_dir=tmp_path / "libs",
        security=security,
    )
    props = kafka.server_properties()
    assert props["listeners"] == "SASL_SSL://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:29092"
    assert "PLAINTEXT:" not in props["listener.security.protocol.map"]
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["super.users"] == "User:admin"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert set(security.passwords) == {"admin", *SERVICES}
    assert len(set(security.passwords.values())) == len(security.passwords)
    assert security.password_file("trainer").stat().st_mode & 0o077 == 0
    scram = kafka.format_command("cluster-id")
    assert scram.count("--add-scram") == len(security.passwords)
    # made once: a second ensure keeps the users' passwords
    assert BrokerSecurity.ensure(tmp_path / "security").passwords == security.passwords
    env = security.client_environment("trainer")
    assert env["TUNELINE_KAFKA_PASSWORD_FILE"] == str(security.password_file("trainer"))
    assert kafka_client_security(
        CommonSettings(
            kafka_security_protocol=env["TUNELINE_KAFKA_SECURITY_PROTOCOL"],  # type: ignore[arg-type]
            kafka_username=env["TUNELINE_KAFKA_USERNAME"],
            kafka_password_file=Path(env["TUNELINE_KAFKA_PASSWORD_FILE"]),
            kafka_ssl_cafile=Path(env["TUNELINE_KAFKA_SSL_CAFILE"]),
        )
    ) == security.client_security("trainer")
