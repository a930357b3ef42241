"""The transactional outbox and its relay, against SQLite and a fake publisher.

A fake publisher is enough here: these are unit tests of the relay's bookkeeping (ordering,
marking, retrying); the real Kafka path is covered by the integration tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db import create_database_engine, create_schema, create_session_factory
from shared.events import OutboxEvent, OutboxRelay, stage_event
from shared.events.envelope import Envelope, current_traceparent
from shared.events.metrics import EventMetrics

SOURCE = "tuneline/test"


class _Future:
    def __init__(self, error: BaseException | None = None) -> None:
        self._error = error
        self.timeouts: list[float | None] = []

    def get(self, timeout: float | None = None) -> object:
        self.timeouts.append(timeout)
        if self._error is not None:
            raise self._error
        return object()


class _FakePublisher:
    """Records what it was asked to send; futures fail while ``fail`` is set."""

    def __init__(self) -> None:
        self.sent: list[Envelope] = []
        self.futures: list[_Future] = []
        self.fail: BaseException | None = None

    def send(self, envelope: Envelope) -> _Future:
        self.sent.append(envelope)
        future = _Future(self.fail)
        self.futures.append(future)
        return future


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    create_schema(engine)
    yield create_session_factory(engine)
    engine.dispose()


def _stage(sessions: sessionmaker[Session], seconds: int, subject: str = "things/t1") -> Envelope:
    with sessions() as session:
        envelope = stage_event(
            session, timestamp_pb2.Timestamp(seconds=seconds), source=SOURCE, subject=subject
        )
        session.commit()
    return envelope


def _rows(sessions: sessionmaker[Session]) -> list[OutboxEvent]:
    with sessions() as session:
        return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)))


def _pending(sessions: sessionmaker[Session]) -> list[OutboxEvent]:
    return [row for row in _rows(sessions) if row.published_at is None]


def test_stage_event_in_committed_session_leaves_a_pending_row(
    sessions: sessionmaker[Session],
) -> None:
    envelope = _stage(sessions, 5, subject="datasets/d1")

    (row,) = _rows(sessions)
    assert row.published_at is None
    assert row.event_id == envelope.id
    assert row.topic == "google.protobuf.Timestamp"
    assert row.subject == "datasets/d1"
    assert row.source == SOURCE
    assert row.traceparent == envelope.traceparent
    assert row.payload == timestamp_pb2.Timestamp(seconds=5).SerializeToString()
    # The row reads back as the very envelope that was staged (time included, as UTC).
    assert row.envelope() == envelope
    assert row.envelope().time.tzinfo is not None


def test_stage_event_continues_the_current_trace(sessions: sessionmaker[Session]) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    token = current_traceparent.set(parent)
    try:
        envelope = _stage(sessions, 1)
    finally:
        current_traceparent.reset(token)
    assert envelope.traceparent.split("-")[1] == parent.split("-")[1]


def test_stage_event_in_rolled_back_session_leaves_nothing(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        stage_event(session, timestamp_pb2.Timestamp(seconds=1), source=SOURCE, subject="a/b")
        session.rollback()
    with sessions() as session:
        stage_event(session, timestamp_pb2.Timestamp(seconds=2), source=SOURCE, subject="a/b")
        # closed without commit

    assert _rows(sessions) == []


def test_stage_event_rolls_back_with_the_state_change(sessions: sessionmaker[Session]) -> None:
    def handler() -> None:
        with sessions() as session, session.begin():
            stage_event(session, timestamp_pb2.Timestamp(seconds=1), source=SOURCE, subject="a/b")
            raise RuntimeError("handler failed after staging")

    with pytest.raises(RuntimeError):
        handler()
    assert _rows(sessions) == []


def test_relay_publishes_in_seq_order_and_marks_rows(sessions: sessionmaker[Session]) -> None:
    staged = [_stage(sessions, n, subject=f"things/t{n % 2}") for n in range(5)]
    publisher = _FakePublisher()
    relay = OutboxRelay(sessions, publisher, send_timeout=7.5)  # type: ignore[arg-type]

    before = datetime.now(UTC)
    assert relay.publish_pending() == 5

    assert [e.id for e in publisher.sent] == [e.id for e in staged]
    assert publisher.sent == staged
    assert [e.decode(timestamp_pb2.Timestamp).seconds for e in publisher.sent] == list(range(5))
    assert all(f.timeouts == [7.5] for f in publisher.futures)
    rows = _rows(sessions)
    assert all(row.published_at is not None for row in rows)
    assert all(
        row.published_at.replace(tzinfo=row.published_at.tzinfo or UTC)
        >= before.replace(microsecond=0)
        for row in rows
        if row.published_at is not None
    )


def test_relay_does_not_resend(sessions: sessionmaker[Session]) -> None:
    _stage(sessions, 1)
    publisher = _FakePublisher()
    relay = OutboxRelay(sessions, publisher)  # type: ignore[arg-type]

    assert relay.publish_pending() == 1
    assert relay.publish_pending() == 0
    assert len(publisher.sent) == 1

    newer = _stage(sessions, 2)
    assert relay.publish_pending() == 1
    assert [e.id for e in publisher.sent][1:] == [newer.id]


def test_relay_works_through_batches(sessions: sessionmaker[Session]) -> None:
    staged = [_stage(sessions, n) for n in range(7)]
    publisher = _FakePublisher()
    relay = OutboxRelay(sessions, publisher, batch_size=3)  # type: ignore[arg-type]

    assert relay.publish_pending() == 7
    assert [e.id for e in publisher.sent] == [e.id for e in staged]
    assert _pending(sessions) == []


def test_relay_with_nothing_pending_sends_nothing(sessions: sessionmaker[Session]) -> None:
    publisher = _FakePublisher()
    assert OutboxRelay(sessions, publisher).publish_pending() == 0  # type: ignore[arg-type]
    assert publisher.sent == []


def test_failed_acknowledgement_leaves_rows_pending_and_next_pass_sends_them(
    sessions: sessionmaker[Session],
) -> None:
    staged = [_stage(sessions, n) for n in range(3)]
    publisher = _FakePublisher()
    publisher.fail = TimeoutError("broker did not acknowledge")
    relay = OutboxRelay(sessions, publisher)  # type: ignore[arg-type]

    with pytest.raises(TimeoutError):
        relay.publish_pending()

    assert len(_pending(sessions)) == 3, "no row may be marked when the batch failed"

    publisher.fail = None
    publisher.sent.clear()
    assert relay.publish_pending() == 3
    assert [e.id for e in publisher.sent] == [e.id for e in staged]
    assert _pending(sessions) == []


def test_failure_on_a_later_row_marks_none_of_the_batch(sessions: sessionmaker[Session]) -> None:
    _stage(sessions, 1)
    _stage(sessions, 2)

    class _SecondFails(_FakePublisher):
        def send(self, envelope: Envelope) -> _Future:
            self.fail = RuntimeError("nack") if len(self.sent) == 1 else None
            return super().send(envelope)

    relay = OutboxRelay(sessions, _SecondFails())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="nack"):
        relay.publish_pending()
    assert len(_pending(sessions)) == 2


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_metrics_count_published_events_and_pending_gauge(
    sessions: sessionmaker[Session],
) -> None:
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)
    publisher = _FakePublisher()
    relay = OutboxRelay(sessions, publisher, metrics=metrics)  # type: ignore[arg-type]

    _stage(sessions, 1)
    _stage(sessions, 2)
    with sessions() as session:
        stage_event(session, struct_pb2.Struct(), source=SOURCE, subject="s/1")
        session.commit()

    publisher.fail = ConnectionError("down")
    with pytest.raises(ConnectionError):
        relay.publish_pending()
    publisher.fail = None

    assert relay.publish_pending() == 3

    assert (
        _sample(registry, "tuneline_events_published_total", {"topic": "google.protobuf.Timestamp"})
        == 2
    )
    assert (
        _sample(registry, "tuneline_events_published_total", {"topic": "google.protobuf.Struct"})
        == 1
    )
    assert _sample(registry, "tuneline_outbox_pending_events") == 0


def test_pending_gauge_shows_the_backlog_while_the_broker_is_down(
    sessions: sessionmaker[Session],
) -> None:
    """The gauge matters most when Kafka is unreachable: it must not stay at 0 then."""
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)
    _stage(sessions, 1)
    _stage(sessions, 2)

    class _Down(_FakePublisher):
        def send(self, envelope: Envelope) -> _Future:
            raise ConnectionError("no broker")

    relay = OutboxRelay(sessions, _Down(), metrics=metrics)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        relay.publish_pending()

    assert _sample(registry, "tuneline_outbox_pending_events") == 2


def test_published_counter_counts_each_event_once_despite_a_failed_pass(
    sessions: sessionmaker[Session],
) -> None:
    """A batch that fails on its last row is re-sent whole; the counter must not double count."""
    _stage(sessions, 1)
    _stage(sessions, 2)
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)

    class _SecondFailsOnce(_FakePublisher):
        def send(self, envelope: Envelope) -> _Future:
            self.fail = RuntimeError("nack") if len(self.sent) == 1 else None
            return super().send(envelope)

    relay = OutboxRelay(sessions, _SecondFailsOnce(), metrics=metrics)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        relay.publish_pending()
    assert relay.publish_pending() == 2

    assert (
        _sample(registry, "tuneline_events_published_total", {"topic": "google.protobuf.Timestamp"})
        == 2
    )


def test_background_relay_publishes_on_wake_and_on_stop(sessions: sessionmaker[Session]) -> None:
    publisher = _FakePublisher()
    relay = OutboxRelay(sessions, publisher, poll_seconds=5)  # type: ignore[arg-type]
    relay.start()
    try:
        envelope = _stage(sessions, 1)
        relay.wake()
        for _ in range(200):
            if publisher.sent:
                break
            time.sleep(0.005)
        assert [e.id for e in publisher.sent] == [envelope.id]
        last = _stage(sessions, 2)
    finally:
        relay.stop(timeout=5)
    # stop() makes one last pass, so an event committed before shutdown still goes out.
    assert publisher.sent[-1].id == last.id
    assert _pending(sessions) == []
