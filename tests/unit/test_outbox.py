"""The transactional outbox and its relay, against SQLite and PostgreSQL and a fake publisher.

A fake publisher is enough here: these are unit tests of the relay's bookkeeping (ordering,
marking, retrying); the real Kafka path is covered by the integration tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from shared.db import create_database_engine, create_schema, create_session_factory
from shared.events import MAX_EVENT_BYTES, EventTooLarge, OutboxEvent, OutboxRelay, stage_event
from shared.events.envelope import Envelope, current_traceparent
from shared.events.metrics import EventMetrics
from tuneline.devtools.waiting import eventually

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
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on an empty database: SQLite and PostgreSQL (``tests/fixtures/postgresql.py``)."""
    engine = create_database_engine(database_url)
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
    # each acknowledgement is awaited once, within the batch's send timeout
    assert all(len(f.timeouts) == 1 and 0 < (f.timeouts[0] or 0) <= 7.5 for f in publisher.futures)
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


class _Clock:
    """The relay's notion of now, moved by the test: backoffs and leases without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _relay(sessions: sessionmaker[Session], publisher: object, **options: Any) -> OutboxRelay:
    return OutboxRelay(sessions, publisher, **options)  # type: ignore[arg-type]


def test_failed_acknowledgement_backs_off_then_the_next_due_pass_sends_in_order(
    sessions: sessionmaker[Session],
) -> None:
    staged = [_stage(sessions, n) for n in range(3)]
    publisher = _FakePublisher()
    publisher.fail = TimeoutError("broker did not acknowledge")
    clock = _Clock()
    relay = _relay(sessions, publisher, clock=clock, retry_backoff_seconds=1.0)

    assert relay.publish_pending() == 0, "a failing pass reports nothing sent and does not raise"
    rows = _pending(sessions)
    assert len(rows) == 3, "no row may be marked when its send failed"
    # one subject: the rows behind the failing one wait for it, so their order holds
    assert [row.attempts for row in rows] == [1, 0, 0]
    assert "TimeoutError: broker did not acknowledge" in (rows[0].last_error or "")
    assert all(row.parked_at is None for row in rows), "a broker outage never parks"

    publisher.fail = None
    publisher.sent.clear()
    assert relay.publish_pending() == 0, "backing off: nothing is tried before the backoff ends"
    assert publisher.sent == []

    clock.advance(1.0)
    assert relay.publish_pending() == 3
    assert [e.id for e in publisher.sent] == [e.id for e in staged]
    assert _pending(sessions) == []


def test_backoff_doubles_and_is_capped(sessions: sessionmaker[Session]) -> None:
    _stage(sessions, 1)
    publisher = _FakePublisher()
    publisher.fail = ConnectionError("down")
    clock = _Clock()
    relay = _relay(
        sessions, publisher, clock=clock, retry_backoff_seconds=1, max_retry_backoff_seconds=4
    )
    waits = []
    for _ in range(5):
        relay.publish_pending()
        (row,) = _pending(sessions)
        assert row.next_attempt_at is not None
        wait = row.next_attempt_at.replace(tzinfo=UTC) - clock.now
        waits.append(wait.total_seconds())
        clock.advance(wait.total_seconds())
    assert waits == [1, 2, 4, 4, 4]


def test_a_failing_row_does_not_hold_back_other_subjects(sessions: sessionmaker[Session]) -> None:
    first = _stage(sessions, 1, subject="things/a")
    bad = _stage(sessions, 2, subject="things/b")
    behind_bad = _stage(sessions, 3, subject="things/b")
    later = _stage(sessions, 4, subject="things/c")

    class _RejectsB(_FakePublisher):
        def send(self, envelope: Envelope) -> _Future:
            self.fail = RuntimeError("nack") if envelope.subject == "things/b" else None
            return super().send(envelope)

    publisher = _RejectsB()
    relay = _relay(sessions, publisher, clock=_Clock())
    assert relay.publish_pending() == 2
    published = {row.event_id for row in _rows(sessions) if row.published_at is not None}
    assert published == {first.id, later.id}
    # one subject's events stay in order: the row behind the failing one was not even tried
    assert behind_bad.id not in {e.id for e in publisher.sent}
    assert bad.id in {e.id for e in publisher.sent}


def test_an_event_the_broker_refuses_is_parked_and_later_events_flow(
    sessions: sessionmaker[Session],
) -> None:
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)
    too_big = _stage(sessions, 1, subject="things/a")
    behind = _stage(sessions, 2, subject="things/a")
    other = _stage(sessions, 3, subject="things/b")

    class _TooLarge(_FakePublisher):
        def send(self, envelope: Envelope) -> _Future:
            self.fail = (
                MessageSizeTooLargeError("record too large") if envelope.id == too_big.id else None
            )
            return super().send(envelope)

    publisher = _TooLarge()
    clock = _Clock()
    relay = _relay(sessions, publisher, clock=clock, metrics=metrics)
    assert relay.publish_pending() == 1, "the other subject flows past the refused row"
    assert relay.publish_pending() == 1, "once parked, the row no longer blocks its subject"

    by_id = {row.event_id: row for row in _rows(sessions)}
    assert by_id[too_big.id].parked_at is not None
    assert by_id[too_big.id].published_at is None
    assert "MessageSizeTooLargeError" in (by_id[too_big.id].last_error or "")
    assert by_id[behind.id].published_at is not None
    assert by_id[other.id].published_at is not None
    assert _sample(registry, "tuneline_outbox_parked_events") == 1
    assert _sample(registry, "tuneline_outbox_pending_events") == 0

    clock.advance(3600)
    publisher.sent.clear()
    assert relay.publish_pending() == 0
    assert publisher.sent == [], "a parked row is never retried by itself"


def test_an_unknown_failure_parks_after_the_configured_attempts(
    sessions: sessionmaker[Session],
) -> None:
    _stage(sessions, 1)
    publisher = _FakePublisher()
    publisher.fail = RuntimeError("serializer bug")
    clock = _Clock()
    relay = _relay(sessions, publisher, clock=clock, park_after_attempts=3)
    for attempt in range(1, 4):
        relay.publish_pending()
        (row,) = _rows(sessions)
        assert row.attempts == attempt
        assert (row.parked_at is not None) == (attempt == 3)
        clock.advance(3600)


def test_a_broker_outage_never_parks(sessions: sessionmaker[Session]) -> None:
    _stage(sessions, 1)
    publisher = _FakePublisher()
    publisher.fail = KafkaTimeoutError("Unable to bootstrap")
    clock = _Clock()
    relay = _relay(sessions, publisher, clock=clock, park_after_attempts=2)
    for _ in range(5):
        relay.publish_pending()
        clock.advance(3600)
    (row,) = _rows(sessions)
    assert row.attempts == 5
    assert row.parked_at is None


def test_a_producer_that_cannot_connect_is_tried_once_per_pass_not_once_per_row(
    sessions: sessionmaker[Session],
) -> None:
    for n in range(4):
        _stage(sessions, n, subject=f"things/t{n}")

    class _NoBroker(_FakePublisher):
        def send(self, envelope: Envelope) -> _Future:
            self.sent.append(envelope)
            raise KafkaTimeoutError("Unable to bootstrap")  # after waiting out its timeout

    publisher = _NoBroker()
    assert _relay(sessions, publisher).publish_pending() == 0
    assert len(publisher.sent) == 1
    assert [row.attempts for row in _rows(sessions)] == [1, 1, 1, 1]


def test_a_batch_the_broker_never_acknowledges_waits_one_send_timeout_in_all(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below min.insync.replicas the producer retries every record until its own timeout: the
    relay gives the whole batch ``send_timeout``, not each row."""
    for n in range(5):
        _stage(sessions, n, subject=f"things/t{n}")
    now = [1000.0]
    monkeypatch.setattr("shared.events.outbox.time.monotonic", lambda: now[0])

    class _Unacknowledged(_Future):
        def get(self, timeout: float | None = None) -> object:
            self.timeouts.append(timeout)
            now[0] += timeout or 0.0  # waits out the timeout it was given
            raise KafkaTimeoutError("Timeout waiting for future")

    class _Refusing(_FakePublisher):
        def send(self, envelope: Envelope) -> _Future:
            self.sent.append(envelope)
            future = _Unacknowledged()
            self.futures.append(future)
            return future

    publisher = _Refusing()
    assert _relay(sessions, publisher, send_timeout=10.0).publish_pending() == 0
    assert len(publisher.sent) == 5
    waited = [t for f in publisher.futures for t in f.timeouts]
    assert waited[0] == 10.0
    assert sum(t or 0.0 for t in waited) == 10.0
    rows = _rows(sessions)
    assert [row.attempts for row in rows] == [1] * 5
    assert all(row.published_at is None and row.parked_at is None for row in rows)


def test_stage_event_refuses_an_event_over_the_size_limit(sessions: sessionmaker[Session]) -> None:
    big = struct_pb2.Struct()
    big.fields["blob"].string_value = "x" * (MAX_EVENT_BYTES + 1)
    with sessions() as session:
        with pytest.raises(EventTooLarge, match="limited to") as raised:
            stage_event(session, big, source=SOURCE, subject="s/1")
        assert raised.value.size > MAX_EVENT_BYTES
        assert not session.new, "nothing was added to the session"
    small = struct_pb2.Struct()
    small.fields["blob"].string_value = "x" * 100
    with sessions() as session, pytest.raises(EventTooLarge):
        stage_event(session, small, source=SOURCE, subject="s/1", max_bytes=64)


def test_two_relays_never_hold_the_same_row(sessions: sessionmaker[Session]) -> None:
    _stage(sessions, 1, subject="things/a")
    _stage(sessions, 2, subject="things/b")
    clock = _Clock()
    first = _relay(sessions, _FakePublisher(), clock=clock, relay_id="a", lease_seconds=60)
    second = _relay(sessions, _FakePublisher(), clock=clock, relay_id="b", lease_seconds=60)

    claimed = first._claim()
    assert len(claimed) == 2
    assert second._claim() == [], "rows under another relay's lease are not taken"

    clock.advance(61)  # the first relay died mid-batch: its lease runs out
    assert [c.seq for c in second._claim()] == [c.seq for c in claimed]


def test_the_claim_skips_locked_rows_on_postgresql_and_needs_no_lock_on_sqlite(
    sessions: sessionmaker[Session],
) -> None:
    query = _relay(sessions, _FakePublisher()).candidates_query(datetime.now(UTC))
    assert "FOR UPDATE SKIP LOCKED" in str(query.compile(dialect=postgresql.dialect()))
    assert "FOR UPDATE" not in str(query.compile(dialect=sqlite.dialect()))


def test_two_relays_on_one_database_publish_each_row_once(database_url: str) -> None:
    """Replicas of a service on one database: SQLite (compare-and-set alone) and PostgreSQL
    (``FOR UPDATE SKIP LOCKED`` plus the compare-and-set)."""
    engine = create_database_engine(database_url)
    create_schema(engine)
    sessions = create_session_factory(engine)
    staged = [_stage(sessions, n, subject=f"things/t{n % 7}") for n in range(60)]
    publishers = [_FakePublisher(), _FakePublisher()]
    relays = [
        _relay(sessions, publisher, batch_size=5, relay_id=name)
        for publisher, name in zip(publishers, ("a", "b"), strict=True)
    ]
    threads = [threading.Thread(target=relay.publish_pending) for relay in relays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for relay in relays:  # whatever a thread left (it ended its pass early) goes out now
        relay.publish_pending()

    sent = [e.id for publisher in publishers for e in publisher.sent]
    assert sorted(sent) == sorted(e.id for e in staged), "every row once, none twice"
    assert _pending(sessions) == []
    engine.dispose()


def test_sent_rows_are_pruned_after_the_retention(sessions: sessionmaker[Session]) -> None:
    _stage(sessions, 1)
    clock = _Clock()
    relay = _relay(sessions, _FakePublisher(), clock=clock, retention=timedelta(hours=1))
    assert relay.publish_pending() == 1
    pending = _stage(sessions, 2)
    relay_down = _relay(sessions, _FakePublisher(), clock=clock, retention=timedelta(hours=1))

    clock.advance(1800)
    assert relay_down.prune_sent() == 0, "inside the retention"
    clock.advance(1801)
    assert relay_down.prune_sent() == 1
    assert [row.event_id for row in _rows(sessions)] == [pending.id], "unsent rows are kept"


def test_create_schema_adds_the_relay_columns_to_an_older_outbox(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as connection:  # the outbox as the first release created it
        connection.exec_driver_sql(
            "CREATE TABLE outbox_events (seq INTEGER PRIMARY KEY, event_id VARCHAR(64) UNIQUE, "
            "topic VARCHAR(255), subject VARCHAR(512), source VARCHAR(255), time DATETIME, "
            "traceparent VARCHAR(64), payload BLOB, published_at DATETIME)"
        )
        connection.exec_driver_sql(
            "INSERT INTO outbox_events (event_id, topic, subject, source, time, traceparent, "
            "payload) VALUES ('e1', 'google.protobuf.Timestamp', 's/1', 'x', "
            "'2026-01-01 00:00:00.000000', '', X'')"
        )
    create_schema(engine)
    sessions = create_session_factory(engine)
    publisher = _FakePublisher()
    assert _relay(sessions, publisher).publish_pending() == 1
    assert [e.id for e in publisher.sent] == ["e1"]
    engine.dispose()


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_metrics_count_published_events_and_pending_gauge(
    sessions: sessionmaker[Session],
) -> None:
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)
    publisher = _FakePublisher()
    clock = _Clock()
    relay = _relay(sessions, publisher, metrics=metrics, clock=clock)

    _stage(sessions, 1)
    _stage(sessions, 2)
    with sessions() as session:
        stage_event(session, struct_pb2.Struct(), source=SOURCE, subject="s/1")
        session.commit()

    publisher.fail = ConnectionError("down")
    assert relay.publish_pending() == 0
    publisher.fail = None
    clock.advance(3600)

    assert relay.publish_pending() == 3

    assert (
        _sample(registry, "tuneline_events_published_total", {"topic": "google.protobuf.Timestamp"})
        == 2
    )
    assert (
        _sample(registry, "tuneline_events_published_total", {"topic": "google.protobuf.Struct"})
        == 1
    )
    assert (
        _sample(
            registry, "tuneline_outbox_send_failures_total", {"topic": "google.protobuf.Timestamp"}
        )
        >= 1
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
            raise KafkaTimeoutError("no broker")

    relay = _relay(sessions, _Down(), metrics=metrics)
    assert relay.publish_pending() == 0

    assert _sample(registry, "tuneline_outbox_pending_events") == 2
    assert _sample(registry, "tuneline_outbox_parked_events") == 0


def test_published_counter_counts_each_event_once_despite_a_failed_pass(
    sessions: sessionmaker[Session],
) -> None:
    """A pass that fails on one row re-sends only that row; the counter counts each once."""
    _stage(sessions, 1, subject="things/a")
    _stage(sessions, 2, subject="things/b")
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)

    class _SecondFailsOnce(_FakePublisher):
        def send(self, envelope: Envelope) -> _Future:
            self.fail = RuntimeError("nack") if len(self.sent) == 1 else None
            return super().send(envelope)

    publisher = _SecondFailsOnce()
    clock = _Clock()
    relay = _relay(sessions, publisher, metrics=metrics, clock=clock)
    assert relay.publish_pending() == 1
    clock.advance(3600)
    assert relay.publish_pending() == 1
    assert len(publisher.sent) == 3, "the acknowledged row was not sent again"

    assert (
        _sample(registry, "tuneline_events_published_total", {"topic": "google.protobuf.Timestamp"})
        == 2
    )


def test_background_relay_publishes_on_wake_and_on_stop(sessions: sessionmaker[Session]) -> None:
    publisher = _FakePublisher()
    # it would not poll within the test: only the wake can make it publish
    relay = OutboxRelay(sessions, publisher, poll_seconds=3600)  # type: ignore[arg-type]
    relay.start()
    try:
        envelope = _stage(sessions, 1)
        relay.wake()
        eventually(lambda: publisher.sent, timeout=60, what="the woken relay to publish")
        assert [e.id for e in publisher.sent] == [envelope.id]
        last = _stage(sessions, 2)
    finally:
        relay.stop(timeout=5)
    # stop() makes one last pass, so an event committed before shutdown still goes out.
    assert publisher.sent[-1].id == last.id
    assert _pending(sessions) == []
