"""The tables the event plumbing owns inside every service's database.

They hang off :class:`PlumbingBase`, created next to the service's own tables in the same
database, so a state change, the event it causes (outbox) and the consumed event that caused it
(processed events) commit in one local transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, String, Text
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
    # Delivery bookkeeping of the relay (`shared.events.outbox`). Every column below is
    # nullable or has a server default, so `shared.db.create_schema` can add it to a table an
    # older version created.
    #: Failed sends so far; the next try waits an exponential backoff after the last one.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Set when the row can never be sent as it is (too large, refused): later rows flow past
    #: it, and `tuneline_outbox_parked_events` alerts. Clearing it re-queues the row.
    parked_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )
    #: The relay holding the row while it sends it, until ``claimed_until`` (a lease): two
    #: relays on one database never send the same row at the same time.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

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


class DeadLetteredRecord(PlumbingBase):
    """A Kafka record a consumer group sent to the DLQ, by its position on the topic.

    Written after the DLQ acknowledged it, so a redelivery of the same record (an offset commit
    lost to a rebalance) is not dead-lettered twice. Keyed by position, not event id: a replay
    of the event (a new record, ``tuneline dlq replay``) must be applied, not skipped.
    """

    __tablename__ = "dead_lettered_records"

    consumer_group: Mapped[str] = mapped_column(String(255), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(255))
    dead_lettered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
