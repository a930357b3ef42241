"""The consumer loop: at-least-once delivery, effects exactly once, poison messages to a DLQ.

For each record, in partition order:

1. decode the CloudEvents envelope and pick the handler by ``ce_type``;
2. in one database transaction: skip if this consumer group already applied the event id,
   else call the handler with the session (its state changes and any events it stages in the
   outbox share that transaction) and record the event id as applied; commit;
3. only then commit the Kafka offset.

A failing record is never skipped silently. What happens depends on the failure
(:func:`classify_failure`):

* **transient** (the database is unavailable or locked, the broker or a peer is unreachable, a
  timeout): the partition is sought back to the record and paused, and the record is tried
  again after an exponential backoff (capped), for as long as it takes. It is never
  dead-lettered: the event is valid, the infrastructure is not.
* **permanent** (an undecodable record, an invalid ``ce_id``, a ``ce_source`` that is not the
  event type's producer when the loop is given ``producers``, a domain error): the original
  key, value and headers go to ``<topic>.dlq`` with the error, topic, partition, offset and
  attempts as extra ``dlq_*`` headers, and the partition moves on.
* **unknown** (anything else): retried like a transient failure, ``max_attempts`` times in
  all, then dead-lettered.

The offset is committed only once the record is applied or acknowledged by the DLQ; a DLQ
that cannot be reached is retried like a transient failure. The loop supervises itself: a crash
restarts it after a backoff, and ``on_health(False)`` is called meanwhile (the runtime turns
gRPC health NOT_SERVING). A broker that is not there yet is not a crash: the loop waits for it.
A consumer whose group membership is gone for good (every offset commit refused, without a
pause as long as its ``session_timeout_ms`` (45 s by default) or a success in between, for
longer than that timeout: kafka-python 3.0.12 was seen fetching and failing commits at 80% CPU,
never rejoining) is a crash too: the loop closes it and starts a fresh one, which joins anew.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import sqlalchemy.exc
from google.protobuf.message import Message
from kafka import KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata, TopicPartition
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import DomainError, ResourceExhausted, Unavailable
from shared.events.envelope import (
    DLQ_VALUE_OMITTED_HEADER,
    Envelope,
    EnvelopeError,
    current_traceparent,
    dlq_topic_for,
)
from shared.events.metrics import EventMetrics
from shared.events.producers import UntrustedEventSource, check_event_source
from shared.events.publisher import MAX_EVENT_BYTES, KafkaEventPublisher
from shared.events.security import PLAINTEXT
from shared.events.tables import DeadLetteredRecord, ProcessedEvent

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class ReceivedEvent(Generic[M]):
    """A decoded event as a handler sees it."""

    message: M
    envelope: Envelope
    topic: str
    partition: int
    offset: int


EventHandler = Callable[[ReceivedEvent[Any], Session], None]


@dataclass(frozen=True)
class Subscription:
    """Which event type a handler applies: ``message_type``'s full name is the topic."""

    message_type: type[Message]
    handler: EventHandler

    @property
    def topic(self) -> str:
        return str(self.message_type.DESCRIPTOR.full_name)


class TransientError(Exception):
    """Raise from a handler when the event is fine but something it needs is not, yet."""


class GroupMembershipLost(Exception):
    """The group coordinator has refused this consumer's commits for longer than its session
    timeout: its member is gone and the client did not rejoin. Only a new consumer will."""


class FailureKind(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"


#: gRPC status names of a peer that is down or overloaded (a handler calling another service).
_TRANSIENT_GRPC_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


def classify_failure(error: BaseException) -> FailureKind:
    """Whether retrying ``error`` can succeed without anyone changing the event."""
    if isinstance(error, TransientError | Unavailable | ResourceExhausted):
        return FailureKind.TRANSIENT
    if isinstance(error, EnvelopeError | DomainError):
        return FailureKind.PERMANENT
    if isinstance(
        error,
        # SQLite "database is locked", a PostgreSQL failover or restart, a full connection pool
        sqlalchemy.exc.OperationalError
        | sqlalchemy.exc.InterfaceError
        | sqlalchemy.exc.TimeoutError
        | KafkaError
        | ConnectionError
        | TimeoutError,
    ):
        return FailureKind.TRANSIENT
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return FailureKind.TRANSIENT
    code = getattr(error, "code", None)
    if callable(code):  # grpc.RpcError, without importing grpc into the event plumbing
        try:
            name = getattr(code(), "name", "")
        except Exception:  # noqa: BLE001 - not an RpcError after all
            name = ""
        if name in _TRANSIENT_GRPC_CODES:
            return FailureKind.TRANSIENT
    return FailureKind.UNKNOWN


@dataclass
class _FailingRecord:
    """The head record of a paused partition, and what went wrong with it so far."""

    offset: int
    tries: int = 0  # every failed try, of any kind: drives the backoff
    unknown_failures: int = 0  # failures of unknown kind: at max_attempts, the DLQ
    resume_at: float = 0.0
    #: Set once the record is known to be poison: what is left is to dead-letter it.
    dead_letter_error: BaseException | None = None
    #: The DLQ acknowledged it: a retry only records the marker, it does not send it again.
    dead_letter_sent: bool = False


class ConsumerLoop:
    """Runs subscriptions for one consumer group on a supervised background thread."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        subscriptions: Iterable[Subscription],
        session_factory: sessionmaker[Session],
        dlq_publisher: KafkaEventPublisher,
        metrics: EventMetrics | None = None,
        max_attempts: int = 3,
        retry_backoff_seconds: float = 0.2,
        max_retry_backoff_seconds: float = 30.0,
        restart_backoff_seconds: float = 1.0,
        poll_timeout_ms: int = 200,
        after_commit: Callable[[], None] | None = None,
        on_health: Callable[[bool], None] | None = None,
        consumer_factory: Callable[[], KafkaConsumer] | None = None,
        producers: Mapping[str, str] | None = None,
        security: Mapping[str, object] = PLAINTEXT,
    ) -> None:
        self._subscriptions = {s.topic: s for s in subscriptions}
        if not self._subscriptions:
            raise ValueError("a consumer loop needs at least one subscription")
        if max_attempts < 1:
            raise ValueError("max_attempts counts the first try and must be at least 1")
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._sessions = session_factory
        self._dlq = dlq_publisher
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._backoff = retry_backoff_seconds
        self._max_backoff = max(max_retry_backoff_seconds, retry_backoff_seconds)
        self._restart_backoff = restart_backoff_seconds
        self._poll_timeout_ms = poll_timeout_ms
        self._after_commit = after_commit
        #: Called with False when the loop goes down after a crash and True when it is back
        #: (the runtime turns gRPC health NOT_SERVING meanwhile).
        self.on_health: list[Callable[[bool], None]] = [on_health] if on_health else []
        self._consumer_factory = consumer_factory or self._kafka_consumer
        #: Event type → the only ``ce_source`` accepted for it (``shared.events.producers``);
        #: ``None`` accepts any source (tests of the loop itself).
        self._producers = producers
        #: kafka-python security settings (``shared.events.security``) of the consumer.
        self._security = security
        self._failing: dict[TopicPartition, _FailingRecord] = {}
        #: When offset commits began failing for want of a group membership (None: they work),
        #: and when the last one was refused.
        self._commits_refused_since: float | None = None
        self._last_commit_refused = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._healthy = True
        #: Set once the group has given this consumer partitions.
        self.ready = threading.Event()
        #: How many times the loop crashed and was restarted.
        self.restarts = 0

    @property
    def topics(self) -> list[str]:
        return sorted(self._subscriptions)

    @property
    def group_id(self) -> str:
        return self._group_id

    @property
    def healthy(self) -> bool:
        """False while the loop is down after a crash (it restarts by itself)."""
        return self._healthy

    def start(self) -> None:
        self._set_healthy(True)
        self._thread = threading.Thread(
            target=self._supervise, name=f"consumer-{self._group_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def _kafka_consumer(self) -> KafkaConsumer:
        return KafkaConsumer(
            **self._security,
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            client_id=f"{self._group_id}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=50,
            # a handler may train-queue or evaluate-queue work; keep the group membership alive
            max_poll_interval_ms=600_000,
        )

    def _set_healthy(self, healthy: bool) -> None:
        if self._metrics:
            self._metrics.consumer_up.labels(self._group_id).set(1 if healthy else 0)
        if healthy == self._healthy:
            return
        self._healthy = healthy
        for listener in self.on_health:
            try:
                listener(healthy)
            except Exception:  # reporting must not kill the loop
                log.exception("consumer health callback failed", extra={"group": self._group_id})

    # -- supervision ----------------------------------------------------------------------

    def _supervise(self) -> None:
        """Run the loop; restart it after a crash, reporting unhealthy until it is back."""
        crashes = 0
        try:
            while not self._stop.is_set():
                try:
                    consumer = self._consumer_factory()
                except KafkaError as error:
                    # no broker yet (a degraded start or an outage): waiting is not a crash
                    log.warning(
                        "Kafka not reachable; consumer waits for it",
                        extra={"group": self._group_id, "error": repr(error)},
                    )
                    self._stop.wait(self._restart_backoff)
                    continue
                try:
                    self._consume(consumer)
                    return  # stopped
                except Exception:
                    crashes += 1
                    self.restarts += 1
                    self._set_healthy(False)
                    if self._metrics:
                        self._metrics.consumer_restarts.labels(self._group_id).inc()
                    log.exception(
                        "consumer loop crashed; restarting",
                        extra={"group": self._group_id, "crashes": crashes},
                    )
                    self._failing.clear()  # the next consumer starts from committed offsets
                    delay = min(self._restart_backoff * 2 ** min(crashes - 1, 10), 60.0)
                    self._stop.wait(delay)
                finally:
                    try:
                        consumer.close()
                    except Exception:  # closing a broken client may fail too
                        log.warning("closing the Kafka consumer failed", exc_info=True)
        finally:
            if not self._stop.is_set():
                self._set_healthy(False)  # the thread itself is ending: nothing consumes now

    # -- the loop -------------------------------------------------------------------------

    def _consume(self, consumer: KafkaConsumer) -> None:
        # Join the group only once this client knows the topics' partitions: kafka-python's
        # group leader assigns from its own metadata, and a leader that joins before its
        # first metadata response assigns nothing and stays without partitions for minutes
        # (a fresh process, about one start in four), leaving the service idle.
        for topic in self.topics:
            consumer.partitions_for_topic(topic)
        self._commits_refused_since = None
        # No rebalance listener to learn of rejoins: with one (a trivial callback), kafka-python
        # 3.0.12's rebalance after a paused partition hung in 3 runs of 3 of
        # test_events_on_kafka.py's database-outage test (cause not found).
        consumer.subscribe(self.topics)
        while not self._stop.is_set():
            self._resume_due(consumer)
            batches = consumer.poll(timeout_ms=self._poll_timeout_ms_now())
            self._set_healthy(True)
            if consumer.assignment():
                self.ready.set()
            for partition, records in batches.items():
                for record in records:
                    if self._stop.is_set():
                        break
                    if not self._process(record):
                        # try this record again later: nothing after it may overtake it
                        consumer.seek(partition, record.offset)
                        consumer.pause(partition)
                        break
                    try:
                        consumer.commit({partition: OffsetAndMetadata(record.offset + 1, "", -1)})
                        self._commits_refused_since = None
                    except (CommitFailedError, RebalanceInProgressError) as error:
                        # the group is rebalancing: the effect is committed in the database,
                        # so a redelivery after the rebalance is skipped by its event id
                        log.warning(
                            "offset commit failed during a rebalance; polling again",
                            extra={"group": self._group_id, "error": repr(error)},
                        )
                        self._check_membership(consumer, error)
                        # The rest of this batch is dropped: if the partition stays ours, fetch
                        # it again from the next record rather than from past the batch.
                        with contextlib.suppress(Exception):
                            consumer.seek(partition, record.offset + 1)
                        break
            self._record_lag(consumer)

    def _check_membership(self, consumer: KafkaConsumer, error: KafkaError) -> None:
        """Raise :class:`GroupMembershipLost` once commits have been refused for longer than
        the session timeout, each soon after the last: a rebalance that long means this member
        was dropped and its client is not rejoining (the next poll normally rejoins within a
        heartbeat or two). A refusal after a quiet spell as long as the timeout starts afresh
        (a later rebalance, not the same one)."""
        now = time.monotonic()
        config = getattr(consumer, "config", None) or {}
        session_timeout = float(config.get("session_timeout_ms", 45_000)) / 1000
        since_last, self._last_commit_refused = now - self._last_commit_refused, now
        if self._commits_refused_since is None or since_last > session_timeout:
            self._commits_refused_since = now
            return
        refused_for = now - self._commits_refused_since
        if refused_for > session_timeout:
            raise GroupMembershipLost(
                f"offset commits refused for {refused_for:.1f} s (session timeout "
                f"{session_timeout:g} s), last with {error!r}; restarting the consumer"
            ) from error

    def _poll_timeout_ms_now(self) -> int:
        """Poll no longer than until the next paused partition is due again."""
        if not self._failing:
            return self._poll_timeout_ms
        wait = min(f.resume_at for f in self._failing.values()) - time.monotonic()
        return max(0, min(self._poll_timeout_ms, int(wait * 1000)))

    def _resume_due(self, consumer: KafkaConsumer) -> None:
        now = time.monotonic()
        assigned = consumer.assignment()
        paused = consumer.paused()
        for partition, failing in list(self._failing.items()):
            if partition not in assigned:
                del self._failing[partition]  # revoked: its new owner starts from the commit
            elif failing.resume_at <= now and partition in paused:
                consumer.resume(partition)

    def _record_lag(self, consumer: KafkaConsumer) -> None:
        if not self._metrics:
            return
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            lag = max(0, highwater - consumer.position(tp))
            self._metrics.consumer_lag.labels(tp.topic, str(tp.partition), self._group_id).set(lag)

    def _process(self, record: Any) -> bool:
        """Apply or dead-letter ``record``; False when it must be tried again later."""
        partition = TopicPartition(record.topic, record.partition)
        failing = self._failing.get(partition)
        if failing is None or failing.offset != record.offset:
            failing = _FailingRecord(record.offset)
        try:
            if failing.dead_letter_error is None and self._apply_record(record, failing):
                self._failing.pop(partition, None)
                return True
            if failing.dead_letter_error is not None:
                self._dead_letter(record, failing)
                self._failing.pop(partition, None)
                return True
        except Exception as error:  # noqa: BLE001 - the DLQ or the database is unreachable
            failing.tries += 1
            log.warning(
                "dead-lettering failed; the record is retried and its offset stays uncommitted",
                extra={"topic": record.topic, "offset": record.offset, "error": repr(error)},
            )
        self._schedule_retry(partition, failing)
        return False

    def _apply_record(self, record: Any, failing: _FailingRecord) -> bool:
        """One try; True when applied (or a duplicate). On failure, updates ``failing``."""
        topic = record.topic
        message: Message
        try:
            envelope = Envelope.from_headers(record.headers or [], record.value)
            subscription = self._subscriptions.get(envelope.type)
            if subscription is None:
                raise EnvelopeError(f"no handler for ce_type {envelope.type!r} on {topic}")
            if self._producers is not None:
                check_event_source(envelope.type, envelope.source, self._producers)
            message = envelope.decode(subscription.message_type)
        except EnvelopeError as error:
            if isinstance(error, UntrustedEventSource):
                self._refused(record, error)
            failing.dead_letter_error = error
            return False
        event = ReceivedEvent(message, envelope, topic, record.partition, record.offset)
        try:
            applied = self._apply(subscription, event)
        except Exception as error:  # noqa: BLE001 - classified below: retried or dead-lettered
            failing.tries += 1
            kind = classify_failure(error)
            if kind is FailureKind.UNKNOWN:
                failing.unknown_failures += 1
            if self._metrics:
                self._metrics.handler_failures.labels(topic).inc()
            log.warning(
                "event handler failed",
                extra={
                    "topic": topic,
                    "event_id": envelope.id,
                    "attempt": failing.tries,
                    "failure": kind.value,
                    "error": repr(error),
                },
            )
            if kind is FailureKind.PERMANENT or failing.unknown_failures >= self._max_attempts:
                failing.dead_letter_error = error
            return False
        if self._metrics:
            self._metrics.consumed.labels(topic, "applied" if applied else "duplicate").inc()
        if applied and self._after_commit:
            self._after_commit()
        return True

    def _refused(self, record: Any, error: UntrustedEventSource) -> None:
        """Count and log an event refused for its ``ce_source`` (it goes to the DLQ next)."""
        if self._metrics:
            self._metrics.refused.labels(record.topic, "untrusted_source").inc()
        log.error(
            "event refused: not from its producer",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": str(error),
            },
        )

    def _schedule_retry(self, partition: TopicPartition, failing: _FailingRecord) -> None:
        exponent = max(0, failing.tries - 1)
        delay = min(self._backoff * 2 ** min(exponent, 30), self._max_backoff)
        failing.resume_at = time.monotonic() + delay
        self._failing[partition] = failing

    def _apply(self, subscription: Subscription, event: ReceivedEvent[Any]) -> bool:
        """Apply once: returns False when the event id was already applied by this group."""
        started = time.perf_counter()
        token = current_traceparent.set(event.envelope.traceparent or None)
        try:
            with self._sessions() as session, session.begin():
                if session.get(ProcessedEvent, (self._group_id, event.envelope.id)) is not None:
                    return False
                subscription.handler(event, session)
                session.add(
                    ProcessedEvent(
                        consumer_group=self._group_id,
                        event_id=event.envelope.id,
                        topic=event.topic,
                        processed_at=datetime.now(UTC),
                    )
                )
            return True
        finally:
            current_traceparent.reset(token)
            if self._metrics:
                self._metrics.handling_seconds.labels(event.topic).observe(
                    time.perf_counter() - started
                )

    def _dead_letter(self, record: Any, failing: _FailingRecord) -> None:
        """Send the record to the DLQ (once), then remember it by its position.

        A record this group already dead-lettered (its offset commit was lost to a rebalance)
        is not sent twice. The marker is by position, so a replay of the same event (a new
        record) is applied normally.
        """
        error = failing.dead_letter_error
        assert error is not None
        position = (self._group_id, record.topic, record.partition, record.offset)
        with self._sessions() as session:
            if session.get(DeadLetteredRecord, position) is not None:
                return
        if not failing.dead_letter_sent:
            self._send_to_dlq(record, error, attempts=failing.tries)
            failing.dead_letter_sent = True
        event_id = dict((k, v) for k, v in (record.headers or []) if v is not None).get("ce_id")
        with self._sessions() as session, session.begin():
            session.merge(
                DeadLetteredRecord(
                    consumer_group=self._group_id,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    event_id=(event_id or b"").decode("utf-8", errors="replace")[:255],
                    dead_lettered_at=datetime.now(UTC),
                )
            )

    def _send_to_dlq(self, record: Any, error: BaseException, *, attempts: int) -> None:
        """Keep the original bytes, add why and where it failed, and wait for the ack.

        A record that would not fit the producer's request limit once the ``dlq_*`` headers
        are added (another producer wrote it close to the broker's limit) is dead-lettered
        without its value: ``dlq_value_omitted`` gives the value's size and sha256, and
        ``dlq_topic``/``dlq_partition``/``dlq_offset`` say where the original still is. Sending
        it whole would fail on every try and hold its partition forever.
        """
        headers = list(record.headers or [])
        headers += [
            ("dlq_error", f"{type(error).__name__}: {error}"[:2000].encode()),
            ("dlq_topic", record.topic.encode()),
            ("dlq_partition", str(record.partition).encode()),
            ("dlq_offset", str(record.offset).encode()),
            ("dlq_consumer_group", self._group_id.encode()),
            ("dlq_attempts", str(attempts).encode()),
        ]
        value = record.value
        if _record_bytes(record.key, value, headers) > MAX_EVENT_BYTES:
            omitted = f"{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()}"
            headers.append((DLQ_VALUE_OMITTED_HEADER, omitted.encode()))
            value = b""
        self._dlq.send_raw(
            dlq_topic_for(record.topic), key=record.key, value=value, headers=headers
        ).get(timeout=30)  # type: ignore[attr-defined]
        if self._metrics:
            self._metrics.dead_lettered.labels(record.topic).inc()
            self._metrics.consumed.labels(record.topic, "dead_lettered").inc()
        log.error(
            "message sent to DLQ",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": repr(error),
            },
        )


def _record_bytes(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> int:
    """A record's key, value and header bytes (the batch overhead is in the margin below
    the request limit that :data:`MAX_EVENT_BYTES` keeps)."""
    return (
        len(key or b"")
        + len(value or b"")
        + sum(len(name) + len(content or b"") for name, content in headers)
    )
