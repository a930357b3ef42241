"""Publishing to Kafka: ``acks=all``, an idempotent producer, topics created on start-up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from shared.events.envelope import Envelope, dlq_topic_for

log = logging.getLogger(__name__)

#: The producer's ``max_request_size``: the largest record (key, value and headers, plus batch
#: overhead) it will send, and the broker's default ``message.max.bytes`` too.
MAX_REQUEST_BYTES = 1024 * 1024
#: The largest event :func:`shared.events.outbox.stage_event` accepts; the margin below
#: ``MAX_REQUEST_BYTES`` covers the record batch overhead and the DLQ's extra headers.
MAX_EVENT_BYTES = MAX_REQUEST_BYTES - 16 * 1024


def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    partitions: int = 3,
    replication_factor: int = 1,
    with_dlq: bool = True,
    timeout_ms: int = 30_000,
    bootstrap_timeout_ms: int = 10_000,
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
        bootstrap_servers=bootstrap,
        client_id="tuneline-admin",
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=bootstrap_timeout_ms,
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

    The producer connects on first use, not on construction, so a service starts (and serves
    gRPC) while Kafka is down; a send then raises a ``KafkaError`` after ``bootstrap_timeout_ms``
    and the outbox keeps the event for the next try.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str,
        request_timeout_ms: int = 30_000,
        bootstrap_timeout_ms: int = 10_000,
    ) -> None:
        self._config = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "retries": 2_147_483_647,
            "max_in_flight_requests_per_connection": 5,
            "linger_ms": 2,
            "request_timeout_ms": request_timeout_ms,
            "bootstrap_timeout_ms": bootstrap_timeout_ms,
            "max_request_size": MAX_REQUEST_BYTES,
        }
        self._lock = threading.Lock()
        self._connecting = threading.Lock()
        self._producer_instance: KafkaProducer | None = None
        self._closed = False

    @property
    def _producer(self) -> KafkaProducer:
        with self._lock:
            if self._closed:
                raise RuntimeError("the publisher is closed")
            if self._producer_instance is not None:
                return self._producer_instance
        # Connect outside the state lock, so close() never waits for a bootstrap timeout;
        # one connection attempt at a time.
        with self._connecting:
            with self._lock:
                if self._producer_instance is not None:
                    return self._producer_instance
            producer = KafkaProducer(**self._config)
            with self._lock:
                if not self._closed:
                    self._producer_instance = producer
                    return producer
            producer.close(timeout=0)
            raise RuntimeError("the publisher was closed while it connected")

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
        with self._lock:
            producer = self._producer_instance
        if producer is not None:
            producer.flush(timeout=timeout)

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._closed = True
            producer, self._producer_instance = self._producer_instance, None
        if producer is not None:
            producer.close(timeout=timeout)
