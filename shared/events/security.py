"""How every Kafka client of a process authenticates: one mapping from settings to kafka-python.

Producers (:class:`shared.events.publisher.KafkaEventPublisher`), consumers
(:class:`shared.events.consumer.ConsumerLoop`, the DLQ reader, the demo's timeline) and admin
clients (:func:`shared.events.publisher.ensure_topics`) all take their security keyword
arguments from :func:`kafka_client_security`, so a service is never half-configured: with
``SASL_SSL`` every connection it makes is TLS (checked against ``KAFKA_SSL_CAFILE``) and logs
in as the service's own SCRAM user, whose broker ACLs let it write only the topics it owns
(``shared.events.acls``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from shared.settings import CommonSettings

#: No security settings: PLAINTEXT, kafka-python's defaults.
PLAINTEXT: Mapping[str, object] = MappingProxyType({})


class KafkaSecurityError(ValueError):
    """The Kafka security settings do not make a working client (the message says which)."""


def kafka_password(settings: CommonSettings) -> str | None:
    """``KAFKA_PASSWORD_FILE``'s content (trailing newline dropped), else ``KAFKA_PASSWORD``."""
    if settings.kafka_password_file is not None:
        try:
            return settings.kafka_password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as error:
            raise KafkaSecurityError(
                f"TUNELINE_KAFKA_PASSWORD_FILE {settings.kafka_password_file} cannot be read: "
                f"{error.strerror or error}"
            ) from error
    return settings.kafka_password


def _existing(path: Path | None, variable: str) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise KafkaSecurityError(f"{variable} {path} is not a file")
    return str(path)


def kafka_client_security(settings: CommonSettings) -> dict[str, object]:
    """The kafka-python keyword arguments (``security_protocol``, ``ssl_*``, ``sasl_*``) of
    every producer, consumer and admin client ``settings`` configure.

    ``PLAINTEXT`` gives nothing (the defaults). ``SSL`` and ``SASL_SSL`` verify the broker's
    certificate and host name against ``KAFKA_SSL_CAFILE`` (the system roots without it) and
    present ``KAFKA_SSL_CERTFILE`` where set. ``SASL_SSL`` needs a username and a password
    (from ``KAFKA_PASSWORD_FILE`` or ``KAFKA_PASSWORD``); missing ones raise
    :class:`KafkaSecurityError` at start, not a failed login later.
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return dict(PLAINTEXT)
    config: dict[str, object] = {
        "security_protocol": protocol,
        "ssl_check_hostname": True,
    }
    cafile = _existing(settings.kafka_ssl_cafile, "TUNELINE_KAFKA_SSL_CAFILE")
    if cafile:
        config["ssl_cafile"] = cafile
    certfile = _existing(settings.kafka_ssl_certfile, "TUNELINE_KAFKA_SSL_CERTFILE")
    keyfile = _existing(settings.kafka_ssl_keyfile, "TUNELINE_KAFKA_SSL_KEYFILE")
    if bool(certfile) != bool(keyfile):
        raise KafkaSecurityError(
            "TUNELINE_KAFKA_SSL_CERTFILE and TUNELINE_KAFKA_SSL_KEYFILE go together"
        )
    if certfile:
        config["ssl_certfile"] = certfile
        config["ssl_keyfile"] = keyfile
    if protocol == "SASL_SSL":
        password = kafka_password(settings)
        if not settings.kafka_username or not password:
            raise KafkaSecurityError(
                "TUNELINE_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs TUNELINE_KAFKA_USERNAME and "
                "TUNELINE_KAFKA_PASSWORD_FILE (or TUNELINE_KAFKA_PASSWORD)"
            )
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_username
        config["sasl_plain_password"] = password
    return config
