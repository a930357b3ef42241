"""What goes wrong starting a local broker: one base class, one subclass per kind of failure."""

from __future__ import annotations


class LocalKafkaError(RuntimeError):
    """Base class for local-broker failures."""


class KafkaPrerequisiteError(LocalKafkaError):
    """Java 17+ or Maven is missing; the message says what to install."""


class KafkaProvisionError(LocalKafkaError):
    """Resolving Kafka's jars from Maven Central failed."""


class KafkaStartError(LocalKafkaError):
    """The broker did not come up (or storage formatting failed); the message has the log's tail."""
