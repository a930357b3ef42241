"""The transactional outbox: a state change and its event commit together.

A handler calls :func:`stage_event` with the same SQLAlchemy session it uses for its state
change; both rows commit in one local transaction. :class:`OutboxRelay` then publishes pending
rows in commit order and marks them sent once Kafka acknowledged them.

* A crash after the commit and before the send loses nothing: the row is still pending and the
  relay sends it when the service starts again.
* A crash after the send and before marking it sent re-sends the same ``ce_id``; consumers
  skip event ids they have applied, so the effect still happens once.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from google.protobuf.message import Message
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.events.envelope import Envelope
from shared.events.metrics import EventMetrics
from shared.events.publisher import KafkaEventPublisher
from shared.events.tables import OutboxEvent

log = logging.getLogger(__name__)


def stage_event(session: Session, message: Message, *, source: str, subject: str) -> Envelope:
    """Add ``message`` to the outbox in ``session``'s transaction; returns its envelope.

    Nothing is sent until the caller commits and the relay runs.
    """
    envelope = Envelope.wrap(message, source=source, subject=subject)
    session.add(
        OutboxEvent(
            event_id=envelope.id,
            topic=envelope.topic,
            subject=envelope.subject,
            source=envelope.source,
            time=envelope.time,
            traceparent=envelope.traceparent,
            payload=envelope.payload,
        )
    )
    return envelope


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
    ) -> None:
        self._sessions = session_factory
        self._publisher = publisher
        self._metrics = metrics
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._send_timeout = send_timeout
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish_pending(self) -> int:
        """Publish every pending row once; returns how many were sent. Safe to call directly."""
        sent = 0
        while True:
            with self._sessions() as session:
                rows = session.scalars(
                    select(OutboxEvent)
                    .where(OutboxEvent.published_at.is_(None))
                    .order_by(OutboxEvent.seq)
                    .limit(self._batch_size)
                ).all()
                if not rows:
                    self._update_pending(session)
                    return sent
                self._update_pending(session)  # the backlog shows while the broker is down
                futures = [(row, self._publisher.send(row.envelope())) for row in rows]
                now = datetime.now(UTC)
                for row, future in futures:
                    future.get(timeout=self._send_timeout)  # type: ignore[attr-defined]
                    row.published_at = now
                session.commit()
                if self._metrics:
                    for row in rows:
                        self._metrics.published.labels(row.topic).inc()
                sent += len(rows)

    def _update_pending(self, session: Session) -> None:
        if self._metrics:
            pending = session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.published_at.is_(None))
            )
            self._metrics.outbox_pending.set(pending or 0)

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
        while True:
            try:
                self.publish_pending()
            except Exception:
                log.exception("outbox relay pass failed; will retry")
            if self._stop.is_set():
                return
            self._wake.wait(self._poll_seconds)
            self._wake.clear()
