"""The transactional outbox: a state change and its event commit together.

A handler calls :func:`stage_event` with the same SQLAlchemy session it uses for its state
change; both rows commit in one local transaction. :class:`OutboxRelay` then publishes pending
rows in commit order and marks them sent once Kafka acknowledged them.

* A crash after the commit and before the send loses nothing: the row is still pending and the
  relay sends it when the service starts again.
* A crash after the send and before marking it sent re-sends the same ``ce_id``; consumers
  skip event ids they have applied, so the effect still happens once.
* An event too large for the producer is refused when it is staged (:class:`EventTooLarge`),
  so the state change fails with it instead of leaving an event that can never go out.
* A row that fails to send waits an exponential backoff; one that can never be sent as it is
  (the broker refuses it) is *parked*: later rows flow past it and
  ``tuneline_outbox_parked_events`` raises an alert. Rows about one subject stay in order: a
  row waits while an earlier unsent, unparked row about the same subject does.
* Several relays on one database (replicas) each publish a row once: a relay claims a batch
  with a compare-and-set on a lease (``claimed_by``/``claimed_until``), after
  ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL. A relay that dies mid-batch loses its
  lease and another one re-sends those rows (same ``ce_id``).
* Sent rows are deleted after ``retention``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import Message
from kafka.errors import KafkaError, MessageSizeTooLargeError
from sqlalchemy import Select, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from shared.events.envelope import Envelope
from shared.events.metrics import EventMetrics
from shared.events.publisher import MAX_EVENT_BYTES, KafkaEventPublisher
from shared.events.tables import OutboxEvent

log = logging.getLogger(__name__)


class EventTooLarge(ValueError):
    """An event bigger than the producer may send; raised by :func:`stage_event`."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(
            f"event {topic} is {size} bytes serialized; events are limited to {limit} bytes "
            "(reference large content by URI instead of embedding it)"
        )
        self.topic = topic
        self.size = size
        self.limit = limit


def event_size(envelope: Envelope) -> int:
    """Bytes the record will take: key, value and headers."""
    headers = sum(len(name) + len(value) for name, value in envelope.headers())
    return len(envelope.key) + len(envelope.payload) + headers


def stage_event(
    session: Session,
    message: Message,
    *,
    source: str,
    subject: str,
    max_bytes: int = MAX_EVENT_BYTES,
) -> Envelope:
    """Add ``message`` to the outbox in ``session``'s transaction; returns its envelope.

    Nothing is sent until the caller commits and the relay runs. Raises :class:`EventTooLarge`
    (before touching the session) when the event could never be sent.
    """
    envelope = Envelope.wrap(message, source=source, subject=subject)
    size = event_size(envelope)
    if size > max_bytes:
        raise EventTooLarge(envelope.topic, size, max_bytes)
    session.add(
        OutboxEvent(
            event_id=envelope.id,
            topic=envelope.topic,
            subject=envelope.subject,
            source=envelope.source,
            time=envelope.time,
            traceparent=envelope.traceparent,
            payload=envelope.payload,
            attempts=0,
        )
    )
    return envelope


def is_unsendable(error: BaseException) -> bool:
    """Whether the broker refused the event itself: sending it again cannot succeed."""
    if isinstance(error, MessageSizeTooLargeError):
        return True
    return isinstance(error, KafkaError) and not error.retriable


@dataclass(frozen=True)
class _Claimed:
    seq: int
    topic: str
    attempts: int
    envelope: Envelope


class OutboxRelay:
    """Publishes pending outbox rows, oldest first, from a background thread.

    ``wake()`` after a commit publishes at once instead of waiting for the next poll, which is
    what keeps event latency (and so rollback latency) low.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        publisher: KafkaEventPublisher,
        *,
        metrics: EventMetrics | None = None,
        poll_seconds: float = 0.2,
        batch_size: int = 100,
        send_timeout: float = 30.0,
        retry_backoff_seconds: float = 0.5,
        max_retry_backoff_seconds: float = 60.0,
        park_after_attempts: int = 10,
        lease_seconds: float = 120.0,
        retention: timedelta = timedelta(days=7),
        prune_every_seconds: float = 300.0,
        relay_id: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = session_factory
        self._publisher = publisher
        self._metrics = metrics
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._send_timeout = send_timeout
        self._backoff = retry_backoff_seconds
        self._max_backoff = max(max_retry_backoff_seconds, retry_backoff_seconds)
        self._park_after = park_after_attempts
        # the lease must outlive a batch's sends, or another relay re-sends them meanwhile
        self._lease = timedelta(seconds=max(lease_seconds, send_timeout * 2))
        self._retention = retention
        self._prune_every = prune_every_seconds
        self._next_prune = 0.0
        # The host name by default: a relay restarted on the same host (a crashed process, a
        # restarted container) takes back its own rows at once instead of waiting out the lease;
        # replicas run on different hosts. Relays sharing a host and an id may both send a row
        # (consumers dedupe it); give them distinct ids to avoid that.
        self.relay_id = (relay_id or socket.gethostname() or uuid.uuid4().hex)[:64]
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass -------------------------------------------------------------------------

    def publish_pending(self) -> int:
        """Publish every row that is due once; returns how many were sent.

        Safe to call directly and from several relays at once. A row that fails is not
        raised: it is retried after a backoff (or parked), and the rest of the pass goes on.
        """
        sent = 0
        while True:
            claimed = self._claim()
            if not claimed:
                self._update_gauges()
                self._prune_if_due()
                return sent
            self._update_gauges()  # the backlog shows while the broker is down
            batch_sent = self._send(claimed)
            sent += batch_sent
            if batch_sent < len(claimed):
                # something failed: the failed rows back off; the next pass goes on past them
                self._update_gauges()
                return sent

    def _due(self, now: datetime) -> ColumnElement[bool]:
        """Rows a relay may take now: unsent, not parked, not backing off, not leased, and not
        behind an unsent, unparked row about the same subject (per-subject order)."""
        earlier = aliased(OutboxEvent)
        blocked = (
            select(earlier.seq)
            .where(
                earlier.subject == OutboxEvent.subject,
                earlier.seq < OutboxEvent.seq,
                earlier.published_at.is_(None),
                earlier.parked_at.is_(None),
            )
            .exists()
        )
        return and_(
            OutboxEvent.published_at.is_(None),
            OutboxEvent.parked_at.is_(None),
            or_(OutboxEvent.next_attempt_at.is_(None), OutboxEvent.next_attempt_at <= now),
            self._claimable(now),
            ~blocked,
        )

    def candidates_query(self, now: datetime) -> Select[Any]:
        """The ``seq`` of the next batch a relay may claim, oldest first."""
        return (
            select(OutboxEvent.seq)
            .where(self._due(now))
            .order_by(OutboxEvent.seq)
            .limit(self._batch_size)
            # PostgreSQL: replicas skip each other's rows instead of waiting for them; SQLite
            # has no row locks (the clause is left out), and the compare-and-set decides alone.
            .with_for_update(skip_locked=True)
        )

    def _claimable(self, now: datetime) -> ColumnElement[bool]:
        """Not leased, the lease ran out, or leased by this relay id (before a restart)."""
        return or_(
            OutboxEvent.claimed_until.is_(None),
            OutboxEvent.claimed_until < now,
            OutboxEvent.claimed_by == self.relay_id,
        )

    def _claim(self) -> list[_Claimed]:
        """Take a batch under this relay's lease (compare-and-set), oldest first."""
        now = self._clock()
        until = now + self._lease
        with self._sessions() as session, session.begin():
            candidates = list(session.scalars(self.candidates_query(now)))
            if not candidates:
                return []
            session.execute(
                update(OutboxEvent)
                .where(
                    OutboxEvent.seq.in_(candidates),
                    OutboxEvent.published_at.is_(None),
                    self._claimable(now),
                )
                .values(claimed_by=self.relay_id, claimed_until=until)
                .execution_options(synchronize_session=False)
            )
            rows = session.scalars(
                select(OutboxEvent)
                .where(
                    OutboxEvent.seq.in_(candidates),
                    OutboxEvent.claimed_by == self.relay_id,
                    OutboxEvent.claimed_until == until,
                )
                .order_by(OutboxEvent.seq)
            ).all()
            return [_Claimed(r.seq, r.topic, r.attempts or 0, r.envelope()) for r in rows]

    def _send(self, claimed: list[_Claimed]) -> int:
        futures: list[tuple[_Claimed, object | None, BaseException | None]] = []
        unreachable: BaseException | None = None
        for row in claimed:
            if unreachable is not None:
                # the producer could not even connect: do not wait out its timeout per row
                futures.append((row, None, unreachable))
                continue
            try:
                futures.append((row, self._publisher.send(row.envelope), None))
            except Exception as error:  # noqa: BLE001 - e.g. no broker, or a record too large
                futures.append((row, None, error))
                if _is_retriable(error):
                    unreachable = error
        sent: list[_Claimed] = []
        failed: list[tuple[_Claimed, BaseException]] = []
        # One deadline for the whole batch, not one per row: while the broker refuses every
        # write (fewer in-sync replicas than min.insync.replicas) or is unreachable, a batch
        # of N rows fails after send_timeout, not N times it.
        deadline = time.monotonic() + self._send_timeout
        for row, future, queue_error in futures:
            failure = queue_error
            if failure is None:
                try:
                    future.get(timeout=max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
                except Exception as send_error:  # noqa: BLE001 - recorded on the row below
                    failure = send_error
            if failure is None:
                sent.append(row)
            else:
                failed.append((row, failure))
        self._record(sent, failed)
        return len(sent)

    def _record(self, sent: list[_Claimed], failed: list[tuple[_Claimed, BaseException]]) -> None:
        now = self._clock()
        with self._sessions() as session, session.begin():
            if sent:
                session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.seq.in_([row.seq for row in sent]))
                    .values(published_at=now, claimed_by=None, claimed_until=None)
                    .execution_options(synchronize_session=False)
                )
            for row, error in failed:
                attempts = row.attempts + 1
                # refused by the broker: at once; unknown: after a few tries; broker down: never
                park = is_unsendable(error) or (
                    not _is_retriable(error) and attempts >= self._park_after
                )
                delay = min(self._backoff * 2 ** min(attempts - 1, 30), self._max_backoff)
                session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.seq == row.seq)
                    .values(
                        attempts=attempts,
                        last_error=f"{type(error).__name__}: {error}"[:2000],
                        next_attempt_at=now + timedelta(seconds=delay),
                        parked_at=now if park else None,
                        claimed_by=None,
                        claimed_until=None,
                    )
                    .execution_options(synchronize_session=False)
                )
        if self._metrics:
            for row in sent:
                self._metrics.published.labels(row.topic).inc()
            for row, _ in failed:
                self._metrics.outbox_send_failures.labels(row.topic).inc()
        for row, error in failed:
            log.warning(
                "outbox event not sent",
                extra={
                    "topic": row.topic,
                    "event_id": row.envelope.id,
                    "attempts": row.attempts + 1,
                    "error": repr(error),
                },
            )

    def _update_gauges(self) -> None:
        if not self._metrics:
            return
        with self._sessions() as session:
            pending = session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.published_at.is_(None), OutboxEvent.parked_at.is_(None))
            )
            parked = session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.published_at.is_(None), OutboxEvent.parked_at.is_not(None))
            )
        self._metrics.outbox_pending.set(pending or 0)
        self._metrics.outbox_parked.set(parked or 0)

    def prune_sent(self, *, older_than: timedelta | None = None) -> int:
        """Delete rows sent more than ``older_than`` (default: the retention) ago."""
        cutoff = self._clock() - (self._retention if older_than is None else older_than)
        with self._sessions() as session, session.begin():
            result = session.execute(
                delete(OutboxEvent)
                .where(OutboxEvent.published_at.is_not(None), OutboxEvent.published_at < cutoff)
                .execution_options(synchronize_session=False)
            )
        return int(getattr(result, "rowcount", 0) or 0)

    def _prune_if_due(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self._prune_every
        pruned = self.prune_sent()
        if pruned:
            log.info("pruned sent outbox events", extra={"rows": pruned})

    # -- the background thread ------------------------------------------------------------

    def wake(self) -> None:
        """Ask the relay to publish now (call after committing staged events)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after a last pass, so events committed before shutdown still go out."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pass()
            self._wake.wait(self._poll_seconds)
            self._wake.clear()
        # A last pass that starts after stop() was called: it sees every event committed
        # before that, even one committed while the previous pass was finishing.
        self._pass()

    def _pass(self) -> None:
        try:
            self.publish_pending()
        except Exception:
            log.exception("outbox relay pass failed; will retry")


def _is_retriable(error: BaseException) -> bool:
    """Failures of the path, not the event: the broker is down or slow. Never parked."""
    if isinstance(error, KafkaError):
        return bool(error.retriable)
    return isinstance(error, ConnectionError | TimeoutError)
