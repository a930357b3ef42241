"""The tables the event plumbing owns inside every service's database.

They hang off :class:`PlumbingBase`, created next to the service's own tables in the same
database, so a state change, the event it causes (outbox) and the consumed event that caused it
(processed events) commit in one local transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.events.envelope import Envelope


class PlumbingBase(DeclarativeBase):
    """Declarative base of the tables `shared` owns inside every service's database."""


class OutboxEvent(PlumbingBase):
    """An event committed with the state change that caused it, waiting to be published."""

    __tablename__ = "outbox_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    topic: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(512))
    source: Mapped[str] = mapped_column(String(255))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    traceparent: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    published_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )

    def envelope(self) -> Envelope:
        return Envelope(
            id=self.event_id,
            source=self.source,
            type=self.topic,
            subject=self.subject,
            time=self.time if self.time.tzinfo else self.time.replace(tzinfo=UTC),
            payload=self.payload,
            traceparent=self.traceparent,
        )


class ProcessedEvent(PlumbingBase):
    """An event id a consumer group has applied, written in the same transaction as the effect."""

    __tablename__ = "processed_events"

    consumer_group: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255))
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
