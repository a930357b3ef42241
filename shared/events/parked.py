"""Outbox rows the relay parked, and putting them back in line (``tuneline outbox``).

A parked row (``outbox_events.parked_at`` set, never sent) is one the broker refused or that
kept failing with an unknown error: the relay never retries it by itself, and
``TunelineOutboxEventsParked`` pages. Once the cause is fixed (a larger ``message.max.bytes``, a
created topic), :func:`requeue_parked` clears the mark and the failure count, and the relay of
the running service sends the row at its next pass, in its subject's order. A re-queued event
keeps its ``ce_id``, so a consumer that somehow applied it already skips it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from shared.events.tables import OutboxEvent


@dataclass(frozen=True)
class ParkedEvent:
    """One parked outbox row, as an operator needs to judge it."""

    seq: int
    event_id: str
    topic: str
    subject: str
    attempts: int
    last_error: str
    parked_at: datetime
    size_bytes: int


class NotParked(LookupError):
    """Some requested rows are not parked (unknown, sent or still queued); nothing changed."""

    def __init__(self, seqs: Sequence[int]) -> None:
        super().__init__(f"not parked outbox rows: {', '.join(str(s) for s in seqs)}")
        self.seqs = list(seqs)


def _is_parked() -> tuple[ColumnElement[bool], ...]:
    return (OutboxEvent.parked_at.is_not(None), OutboxEvent.published_at.is_(None))


def parked_events(session: Session) -> list[ParkedEvent]:
    """Every parked row, oldest first."""
    rows = session.scalars(select(OutboxEvent).where(*_is_parked()).order_by(OutboxEvent.seq))
    return [
        ParkedEvent(
            seq=row.seq,
            event_id=row.event_id,
            topic=row.topic,
            subject=row.subject,
            attempts=row.attempts,
            last_error=row.last_error or "",
            parked_at=row.parked_at,  # type: ignore[arg-type] # selected as not null
            size_bytes=len(row.payload),
        )
        for row in rows
    ]


def requeue_parked(session: Session, seqs: Sequence[int] | None = None) -> list[int]:
    """Put parked rows back in line (all of them with ``seqs=None``); returns their ``seq``s.

    All or nothing: :class:`NotParked` when any named row is not parked. Runs in the caller's
    transaction; the running relay picks the rows up at its next pass once it commits.
    """
    query = select(OutboxEvent.seq).where(*_is_parked()).with_for_update()
    if seqs is not None:
        query = query.where(OutboxEvent.seq.in_(list(seqs)))
    found = sorted(session.scalars(query))
    if seqs is not None:
        missing = sorted(set(seqs) - set(found))
        if missing:
            raise NotParked(missing)
    if found:
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.seq.in_(found))
            .values(parked_at=None, next_attempt_at=None, attempts=0)
            .execution_options(synchronize_session=False)
        )
    return found
