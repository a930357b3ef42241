"""Publishing to Kafka: ``acks=all``, an idempotent producer, topics created on start-up."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from shared.events.envelope import Envelope, dlq_topic_for

log = logging.getLogger(__name__)


def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    partitions: int = 3,
    replication_factor: int = 1,
    with_dlq: bool = True,
    timeout_ms: int = 30_000,
) -> None:
    """Create ``topics`` (and their ``.dlq`` twins) when missing; existing ones are left as is.

    Services create the topics they publish to and consume from at start-up, so the broker can
    run with ``auto.create.topics.enable=false`` and a typo cannot invent a topic.
    """
    wanted = set(topics)
    if with_dlq:
        wanted |= {dlq_topic_for(t) for t in wanted if not t.endswith(".dlq")}
    if not wanted:
        return
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="tuneline-admin", request_timeout_ms=timeout_ms
    )
    try:
        existing = set(admin.list_topics())
        missing = sorted(wanted - existing)
        for topic in missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            topic, num_partitions=partitions, replication_factor=replication_factor
                        )
                    ],
                    timeout_ms=timeout_ms,
                )
                log.info("created topic", extra={"topic": topic})
            except TopicAlreadyExistsError:
                pass  # another service created it between list and create
    finally:
        admin.close()


class KafkaEventPublisher:
    """Sends envelopes with the durability the outbox relies on.

    ``acks=all`` and ``enable_idempotence`` mean a send that returns has been written to every
    in-sync replica exactly once, even if the producer retried internally.
    """

    def __init__(self, bootstrap: str, *, client_id: str, request_timeout_ms: int = 30_000) -> None:
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            retries=2_147_483_647,
            max_in_flight_requests_per_connection=5,
            linger_ms=2,
            request_timeout_ms=request_timeout_ms,
        )

    def send(self, envelope: Envelope, *, topic: str | None = None) -> object:
        """Queue one envelope; returns kafka-python's future (``.get()`` waits for the ack)."""
        return self._producer.send(
            topic or envelope.topic,
            key=envelope.key,
            value=envelope.payload,
            headers=envelope.headers(),
        )

    def send_raw(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> object:
        """Send bytes as they are (the DLQ keeps a failing message's original bytes)."""
        return self._producer.send(topic, key=key, value=value, headers=headers)

    def publish(self, envelope: Envelope, *, timeout: float = 30.0) -> None:
        """Send and wait for the acknowledgement."""
        self.send(envelope).get(timeout=timeout)  # type: ignore[attr-defined]

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._producer.close(timeout=timeout)
