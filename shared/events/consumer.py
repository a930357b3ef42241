"""The consumer loop: at-least-once delivery, effects exactly once, poison messages to a DLQ.

For each record, in partition order:

1. decode the CloudEvents envelope and pick the handler by ``ce_type``;
2. in one database transaction: skip if this consumer group already applied the event id,
   else call the handler with the session (its state changes and any events it stages in the
   outbox share that transaction) and record the event id as applied; commit;
3. only then commit the Kafka offset.

A handler that raises is retried ``max_attempts`` times with a short backoff; then the original
key, value and headers go to ``<topic>.dlq`` with the error, topic, partition and offset as extra
headers, and the partition moves on. A record that cannot be decoded goes straight to the DLQ.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from kafka import KafkaConsumer
from kafka.errors import CommitFailedError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata
from sqlalchemy.orm import Session, sessionmaker

from shared.events.envelope import Envelope, EnvelopeError, current_traceparent, dlq_topic_for
from shared.events.metrics import EventMetrics
from shared.events.publisher import KafkaEventPublisher
from shared.events.tables import ProcessedEvent

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


class ConsumerLoop:
    """Runs subscriptions for one consumer group on a background thread."""

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
        poll_timeout_ms: int = 200,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._subscriptions = {s.topic: s for s in subscriptions}
        if not self._subscriptions:
            raise ValueError("a consumer loop needs at least one subscription")
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._sessions = session_factory
        self._dlq = dlq_publisher
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._backoff = retry_backoff_seconds
        self._poll_timeout_ms = poll_timeout_ms
        self._after_commit = after_commit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: KafkaConsumer | None = None
        self.ready = threading.Event()

    @property
    def topics(self) -> list[str]:
        return sorted(self._subscriptions)

    def start(self) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            client_id=f"{self._group_id}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=50,
            # a handler may train-queue or evaluate-queue work; keep the group membership alive
            max_poll_interval_ms=600_000,
        )
        self._thread = threading.Thread(
            target=self._run, name=f"consumer-{self._group_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        try:
            # Join the group only once this client knows the topics' partitions: kafka-python's
            # group leader assigns from its own metadata, and a leader that joins before its
            # first metadata response assigns nothing and stays without partitions for minutes
            # (a fresh process, about one start in four), leaving the service idle.
            for topic in self.topics:
                consumer.partitions_for_topic(topic)
            consumer.subscribe(self.topics)
            while not self._stop.is_set():
                batches = consumer.poll(timeout_ms=self._poll_timeout_ms)
                if consumer.assignment():
                    self.ready.set()
                for partition, records in batches.items():
                    for record in records:
                        if self._stop.is_set():
                            break
                        self._process(record)
                        try:
                            consumer.commit(
                                {partition: OffsetAndMetadata(record.offset + 1, "", -1)}
                            )
                        except (CommitFailedError, RebalanceInProgressError) as error:
                            # the group is rebalancing: the effect is committed in the database,
                            # so a redelivery after the rebalance is skipped by its event id
                            log.warning(
                                "offset commit failed during a rebalance; polling again",
                                extra={"group": self._group_id, "error": repr(error)},
                            )
                            break
                self._record_lag(consumer)
        except Exception:
            log.exception("consumer loop crashed", extra={"group": self._group_id})
            raise
        finally:
            consumer.close()

    def _record_lag(self, consumer: KafkaConsumer) -> None:
        if not self._metrics:
            return
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            lag = max(0, highwater - consumer.position(tp))
            self._metrics.consumer_lag.labels(tp.topic, str(tp.partition), self._group_id).set(lag)

    def _process(self, record: Any) -> None:
        topic = record.topic
        message: Message
        try:
            envelope = Envelope.from_headers(record.headers or [], record.value)
            subscription = self._subscriptions.get(envelope.type)
            if subscription is None:
                raise EnvelopeError(f"no handler for ce_type {envelope.type!r} on {topic}")
            message = envelope.decode(subscription.message_type)
        except EnvelopeError as error:
            self._dead_letter(record, error, attempts=0)
            return
        event = ReceivedEvent(message, envelope, topic, record.partition, record.offset)
        for attempt in range(1, self._max_attempts + 1):
            try:
                applied = self._apply(subscription, event)
            except Exception as error:  # noqa: BLE001 - any handler failure is retried, then DLQ'd
                if self._metrics:
                    self._metrics.handler_failures.labels(topic).inc()
                log.warning(
                    "event handler failed",
                    extra={
                        "topic": topic,
                        "event_id": envelope.id,
                        "attempt": attempt,
                        "error": repr(error),
                    },
                )
                if attempt == self._max_attempts:
                    self._dead_letter(record, error, attempts=attempt)
                    self._mark_applied(event)
                    return
                time.sleep(self._backoff * attempt)
            else:
                if self._metrics:
                    self._metrics.consumed.labels(
                        topic, "applied" if applied else "duplicate"
                    ).inc()
                if applied and self._after_commit:
                    self._after_commit()
                return

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

    def _mark_applied(self, event: ReceivedEvent[Any]) -> None:
        """Record a dead-lettered event id as handled: if the offset commit is lost to a
        rebalance, the redelivery is skipped instead of dead-lettered a second time."""
        with self._sessions() as session, session.begin():
            if session.get(ProcessedEvent, (self._group_id, event.envelope.id)) is None:
                session.add(
                    ProcessedEvent(
                        consumer_group=self._group_id,
                        event_id=event.envelope.id,
                        topic=event.topic,
                        processed_at=datetime.now(UTC),
                    )
                )

    def _dead_letter(self, record: Any, error: BaseException, *, attempts: int) -> None:
        """Keep the original bytes, add why and where it failed, and wait for the ack."""
        headers = list(record.headers or [])
        headers += [
            ("dlq_error", f"{type(error).__name__}: {error}"[:2000].encode()),
            ("dlq_topic", record.topic.encode()),
            ("dlq_partition", str(record.partition).encode()),
            ("dlq_offset", str(record.offset).encode()),
            ("dlq_consumer_group", self._group_id.encode()),
            ("dlq_attempts", str(attempts).encode()),
        ]
        self._dlq.send_raw(
            dlq_topic_for(record.topic), key=record.key, value=record.value, headers=headers
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
