"""Publishing to Kafka: ``acks=all``, an idempotent producer, replicated topics created on
start-up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from shared.events.envelope import Envelope, dlq_topic_for
from shared.events.security import PLAINTEXT

log = logging.getLogger(__name__)

#: The producer's ``max_request_size``: the largest record (key, value and headers, plus batch
#: overhead) it will send, and the broker's default ``message.max.bytes`` too.
MAX_REQUEST_BYTES = 1024 * 1024
#: The largest event :func:`shared.events.outbox.stage_event` accepts; the margin below
#: ``MAX_REQUEST_BYTES`` covers the record batch overhead and the DLQ's extra headers.
MAX_EVENT_BYTES = MAX_REQUEST_BYTES - 16 * 1024


#: Copies of each topic where the cluster has that many brokers (Kafka's durability guidance).
DURABLE_REPLICATION_FACTOR = 3


def min_insync_replicas_for(replication_factor: int) -> int:
    """The ``min.insync.replicas`` that goes with ``replication_factor``: 2 where there are 3
    or more copies (an acknowledged write is on two brokers and one can be lost), else 1."""
    return max(1, min(2, replication_factor - 1))


@dataclass(frozen=True)
class TopicDurability:
    """How many copies of each topic partition, and how many must have a write before
    ``acks=all`` acknowledges it."""

    replication_factor: int
    min_insync_replicas: int

    @classmethod
    def for_cluster(
        cls,
        brokers: int,
        *,
        replication_factor: int | None = None,
        min_insync_replicas: int | None = None,
    ) -> TopicDurability:
        """The configured values, else derived from the live ``brokers``: RF ``min(3,
        brokers)`` and :func:`min_insync_replicas_for` it (RF 1 on a single broker).

        A configured replication factor is kept even above the brokers that answer now (topic
        creation then fails and is retried until they are there), so a production cluster
        with a broker down at start never gets a topic with fewer copies than it asked for.
        """
        rf = replication_factor or max(1, min(DURABLE_REPLICATION_FACTOR, brokers))
        min_isr = min_insync_replicas or min_insync_replicas_for(rf)
        if min_isr > rf:
            raise ValueError(
                f"min.insync.replicas {min_isr} is above the replication factor {rf}: "
                "no write could ever be acknowledged"
            )
        return cls(rf, min_isr)


def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    partitions: int = 3,
    replication_factor: int | None = None,
    min_insync_replicas: int | None = None,
    with_dlq: bool = True,
    timeout_ms: int = 30_000,
    bootstrap_timeout_ms: int = 10_000,
    security: Mapping[str, object] = PLAINTEXT,
) -> list[str]:
    """Create ``topics`` (and their ``.dlq`` twins) when missing; check the existing ones.

    Services create the topics they publish to and consume from at start-up, so the broker can
    run with ``auto.create.topics.enable=false`` and a typo cannot invent a topic. New topics
    get :meth:`TopicDurability.for_cluster`'s replication factor and ``min.insync.replicas``.
    Existing topics are left as they are (Kafka does not change a replication factor in
    place); each one with fewer replicas or a lower ``min.insync.replicas`` than that is
    logged as a warning and returned, one line per topic. ``security`` is
    :func:`shared.events.security.kafka_client_security`'s client settings.
    """
    wanted = set(topics)
    if with_dlq:
        wanted |= {dlq_topic_for(t) for t in wanted if not t.endswith(".dlq")}
    if not wanted:
        return []
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="tuneline-admin",
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=bootstrap_timeout_ms,
        **security,
    )
    try:
        brokers = [
            b for b in admin.describe_cluster().get("brokers") or [] if not b.get("is_fenced")
        ]
        durability = TopicDurability.for_cluster(
            len(brokers),
            replication_factor=replication_factor,
            min_insync_replicas=min_insync_replicas,
        )
        existing = set(admin.list_topics())
        for topic in sorted(wanted - existing):
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            topic,
                            num_partitions=partitions,
                            replication_factor=durability.replication_factor,
                            topic_configs={
                                "min.insync.replicas": str(durability.min_insync_replicas)
                            },
                        )
                    ],
                    timeout_ms=timeout_ms,
                )
                log.info(
                    "created topic",
                    extra={
                        "topic": topic,
                        "replication_factor": durability.replication_factor,
                        "min_insync_replicas": durability.min_insync_replicas,
                    },
                )
            except TopicAlreadyExistsError:
                pass  # another service created it between list and create
        weaker = _weaker_topics(admin, sorted(wanted & existing), durability)
    finally:
        admin.close()
    for problem in weaker:
        log.warning("topic is less durable than configured", extra={"problem": problem})
    return weaker


def _weaker_topics(
    admin: KafkaAdminClient, topics: list[str], durability: TopicDurability
) -> list[str]:
    """One line per existing topic with fewer replicas or a lower ``min.insync.replicas``."""
    if not topics:
        return []
    problems: list[str] = []
    for described in admin.describe_topics(topics):
        replicas = min(
            (len(partition_replicas(p)) for p in described.get("partitions") or ()), default=0
        )
        if replicas < durability.replication_factor:
            problems.append(
                f"{described.get('name') or described.get('topic')}: {replicas} replicas, "
                f"configured {durability.replication_factor}"
            )
    try:
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, ["min.insync.replicas"]) for t in topics],
            config_filter="all",
        )
    except KafkaError as error:  # an old broker or client: the replica check above stands
        log.info("could not read topic configs", extra={"error": repr(error)})
        return problems
    for topic, value in _min_insync_by_topic(configs).items():
        if value < durability.min_insync_replicas:
            problems.append(
                f"{topic}: min.insync.replicas {value}, configured {durability.min_insync_replicas}"
            )
    return problems


def partition_replicas(partition: dict[str, object]) -> list[int]:
    """Broker ids holding a partition, from ``describe_topics`` (``replica_nodes`` in
    kafka-python 3, ``replicas`` in 2.x)."""
    return list(partition.get("replica_nodes", partition.get("replicas")) or ())  # type: ignore[call-overload]


def partition_isr(partition: dict[str, object]) -> list[int]:
    """Broker ids in a partition's in-sync replica set (``isr_nodes`` / ``isr``)."""
    return list(partition.get("isr_nodes", partition.get("isr")) or ())  # type: ignore[call-overload]


def partition_leader(partition: dict[str, object]) -> int:
    """The broker id leading a partition, -1 for none (``leader_id`` / ``leader``)."""
    leader = partition.get("leader_id", partition.get("leader"))
    return int(leader) if isinstance(leader, int) else -1


def _min_insync_by_topic(described: object) -> dict[str, int]:
    """``min.insync.replicas`` per topic from ``describe_configs`` (kafka-python 3's nested
    dict; 2.x returns response objects, which are skipped)."""
    found: dict[str, int] = {}
    topics = described.get("topic", {}) if isinstance(described, dict) else {}
    for topic, entries in topics.items():
        entry = entries.get("min.insync.replicas") if isinstance(entries, dict) else None
        value = entry.get("value") if isinstance(entry, dict) else entry
        if value is not None:
            found[str(topic)] = int(value)
    return found


def _failed_for_good(producer: KafkaProducer) -> bool:
    """Whether kafka-python put this idempotent producer in its fatal-error state, where every
    later send fails at once. 3.0.12 does so on any non-retriable broker error for one batch (a
    record larger than the topic's ``max.message.bytes``, a write the ACLs refuse): one bad
    record would otherwise silence the relay, or the DLQ, until the process restarts."""
    manager = getattr(producer, "_transaction_manager", None)
    has_fatal_error = getattr(manager, "has_fatal_error", None)
    return bool(callable(has_fatal_error) and has_fatal_error())


class KafkaEventPublisher:
    """Sends envelopes with the durability the outbox relies on.

    ``acks=all`` and ``enable_idempotence`` mean a send that returns has been written to every
    in-sync replica exactly once, even if the producer retried internally.

    The producer connects on first use, not on construction, so a service starts (and serves
    gRPC) while Kafka is down; a send then raises a ``KafkaError`` after ``bootstrap_timeout_ms``
    and the outbox keeps the event for the next try. ``security`` is
    :func:`shared.events.security.kafka_client_security`'s client settings (its SCRAM user).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str,
        request_timeout_ms: int = 30_000,
        bootstrap_timeout_ms: int = 10_000,
        security: Mapping[str, object] = PLAINTEXT,
    ) -> None:
        self._config: dict[str, object] = {
            **security,
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
        broken: KafkaProducer | None = None
        with self._lock:
            if self._closed:
                raise RuntimeError("the publisher is closed")
            if self._producer_instance is not None:
                if not _failed_for_good(self._producer_instance):
                    return self._producer_instance
                broken, self._producer_instance = self._producer_instance, None
        if broken is not None:
            log.warning(
                "the Kafka producer failed for good; connecting a new one",
                extra={"client_id": self._config["client_id"]},
            )
            broken.close(timeout=0)
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
