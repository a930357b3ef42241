"""The consumer loop's failure handling, against an in-memory Kafka consumer and SQLite.

The fake consumer implements the few ``KafkaConsumer`` calls the loop makes (poll, seek, pause,
resume, commit) over one partition's records, so these tests decide what fails and when; the
integration tests run the same loop on the real broker.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy.exc
from google.protobuf import timestamp_pb2
from kafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    RebalanceInProgressError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry
from sqlalchemy import Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from shared.db import create_database_engine, create_schema, create_session_factory
from shared.errors import InvalidArgument, Unavailable
from shared.events import (
    ConsumerLoop,
    DeadLetteredRecord,
    Envelope,
    EventMetrics,
    FailureKind,
    ReceivedEvent,
    Subscription,
    TransientError,
    classify_failure,
)
from shared.events.envelope import EnvelopeError
from shared.events.publisher import MAX_EVENT_BYTES
from tuneline.devtools.waiting import eventually

EVENT = timestamp_pb2.Timestamp
TOPIC = "google.protobuf.Timestamp"
PARTITION = TopicPartition(TOPIC, 0)


class _Base(DeclarativeBase):
    pass


class Effect(_Base):
    __tablename__ = "effects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64))


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class _FakeKafka:
    """One partition; remembers commits; ``poll`` honours pause and seek like kafka-python."""

    records: list[_Record]
    next_offset: int = 0
    paused_partitions: set[TopicPartition] = field(default_factory=set)
    committed: int = 0
    polls: int = 0
    closed: bool = False
    crash_on_poll: int | None = None  # raise once on that poll (a bug in the loop's path)
    #: Raised by the next commits, one each (the group rebalancing).
    commit_errors: list[Exception] = field(default_factory=list)
    #: Every commit refused, and a new record whenever the partition is caught up: a consumer
    #: whose member is gone and that never rejoins, under steady traffic.
    memberless: bool = False
    config: dict[str, Any] = field(default_factory=lambda: {"session_timeout_ms": 45_000})

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return {0}

    def subscribe(self, _topics: list[str]) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {PARTITION}

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_partitions)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_partitions.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_partitions.difference_update(partitions)

    def seek(self, _partition: TopicPartition, offset: int) -> None:
        self.next_offset = offset

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[_Record]]:
        self.polls += 1
        if self.crash_on_poll is not None and self.polls == self.crash_on_poll:
            raise RuntimeError("a bug in the loop's own path")
        if self.memberless and self.next_offset >= len(self.records):
            self.records.append(_record(len(self.records), f"e{len(self.records)}"))
        if PARTITION in self.paused_partitions or self.next_offset >= len(self.records):
            threading.Event().wait(min(timeout_ms, 5) / 1000)
            return {}
        batch = self.records[self.next_offset :]
        self.next_offset = len(self.records)
        return {PARTITION: batch}

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.memberless:
            raise CommitFailedError("UnknownMemberIdError")
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        self.committed = offsets[PARTITION].offset

    def highwater(self, _partition: TopicPartition) -> int:
        return len(self.records)

    def position(self, _partition: TopicPartition) -> int:
        return self.next_offset

    def close(self) -> None:
        self.closed = True


class _FakeFuture:
    def __init__(self, error: BaseException | None) -> None:
        self._error = error

    def get(self, timeout: float | None = None) -> None:
        if self._error:
            raise self._error


@dataclass
class _FakeDlq:
    sent: list[tuple[str, list[tuple[str, bytes]]]] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    failures_left: int = 0

    def send_raw(self, topic: str, *, key: Any, value: Any, headers: Any) -> _FakeFuture:
        if self.failures_left:
            self.failures_left -= 1
            return _FakeFuture(KafkaTimeoutError("DLQ broker unreachable"))
        self.sent.append((topic, headers))
        self.values.append(value)
        return _FakeFuture(None)


def _record(
    offset: int,
    event_id: str,
    *,
    headers: list[tuple[str, bytes]] | None = None,
    source: str = "tuneline/test",
) -> _Record:
    envelope = Envelope.wrap(
        EVENT(seconds=offset), source=source, subject="things/t1", event_id=event_id
    )
    return _Record(
        TOPIC,
        0,
        offset,
        envelope.key,
        envelope.payload,
        envelope.headers() if headers is None else headers,
    )


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on an empty database: SQLite and PostgreSQL (``tests/fixtures/postgresql.py``)."""
    engine = create_database_engine(database_url)
    create_schema(engine, [_Base.metadata])
    yield create_session_factory(engine)
    engine.dispose()


def _effects(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(Effect.event_id).order_by(Effect.id)))


def _run_until(
    kafka: _FakeKafka,
    sessions: sessionmaker[Session],
    handler: Callable[[ReceivedEvent[Any], Session], None],
    done: Callable[[], bool],
    *,
    dlq: _FakeDlq | None = None,
    registry: CollectorRegistry | None = None,
    health: list[bool] | None = None,
    factory: Callable[[], Any] | None = None,
    producers: dict[str, str] | None = None,
) -> ConsumerLoop:
    loop = ConsumerLoop(
        bootstrap="unused:0",
        group_id="g",
        subscriptions=[Subscription(EVENT, handler)],
        session_factory=sessions,
        dlq_publisher=dlq or _FakeDlq(),  # type: ignore[arg-type]
        metrics=EventMetrics(registry or CollectorRegistry()),
        max_attempts=3,
        retry_backoff_seconds=0.001,
        max_retry_backoff_seconds=0.004,
        restart_backoff_seconds=0.001,
        poll_timeout_ms=5,
        on_health=health.append if health is not None else None,
        consumer_factory=factory or (lambda: kafka),
        producers=producers,
    )
    loop.start()
    try:
        eventually(done, timeout=60, what="the loop to reach the expected state")
    finally:
        loop.stop(timeout=10)
    return loop


def _apply(event: ReceivedEvent[Any], session: Session) -> None:
    session.add(Effect(event_id=event.envelope.id))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("database is locked")),
            "transient",
        ),
        (KafkaConnectionError("broker gone"), "transient"),
        (ConnectionResetError("peer reset"), "transient"),
        (TimeoutError("slow"), "transient"),
        (Unavailable("trainer is draining"), "transient"),
        (TransientError("artifact store not mounted yet"), "transient"),
        (EnvelopeError("bad header"), "permanent"),
        (InvalidArgument("no such base model"), "permanent"),
        (RuntimeError("bug"), "unknown"),
        (sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("UNIQUE")), "unknown"),
    ],
)
def test_failures_are_classified(error: BaseException, kind: str) -> None:
    assert classify_failure(error) is FailureKind(kind)


def test_a_locked_database_is_retried_until_it_applies_and_never_dead_lettered(
    sessions: sessionmaker[Session],
) -> None:
    kafka = _FakeKafka([_record(0, "e0"), _record(1, "e1")])
    dlq = _FakeDlq()
    calls: list[str] = []

    def locked_five_times(event: ReceivedEvent[Any], session: Session) -> None:
        calls.append(event.envelope.id)
        if event.envelope.id == "e0" and calls.count("e0") <= 5:
            raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked"))
        _apply(event, session)

    _run_until(kafka, sessions, locked_five_times, lambda: kafka.committed == 2, dlq=dlq)

    assert _effects(sessions) == ["e0", "e1"], "applied once each, in order"
    assert calls.count("e0") == 6, "tried until it applied, well past max_attempts"
    assert dlq.sent == []


def test_an_unknown_failure_is_dead_lettered_after_max_attempts(
    sessions: sessionmaker[Session],
) -> None:
    kafka = _FakeKafka([_record(0, "poison"), _record(1, "fine")])
    dlq = _FakeDlq()
    registry = CollectorRegistry()
    calls: list[str] = []

    def handler(event: ReceivedEvent[Any], session: Session) -> None:
        calls.append(event.envelope.id)
        if event.envelope.id == "poison":
            raise RuntimeError("always")
        _apply(event, session)

    _run_until(kafka, sessions, handler, lambda: kafka.committed == 2, dlq=dlq, registry=registry)

    assert calls.count("poison") == 3
    [(topic, headers)] = dlq.sent
    assert topic == f"{TOPIC}.dlq"
    assert dict(headers)["dlq_attempts"] == b"3"
    assert _effects(sessions) == ["fine"]
    assert registry.get_sample_value("tuneline_events_dead_lettered_total", {"topic": TOPIC}) == 1


def test_a_domain_error_is_dead_lettered_at_once(sessions: sessionmaker[Session]) -> None:
    kafka = _FakeKafka([_record(0, "refused")])
    dlq = _FakeDlq()
    calls: list[str] = []

    def handler(event: ReceivedEvent[Any], _session: Session) -> None:
        calls.append(event.envelope.id)
        raise InvalidArgument("the event names a model that does not exist")

    _run_until(kafka, sessions, handler, lambda: kafka.committed == 1, dlq=dlq)
    assert calls == ["refused"]
    assert len(dlq.sent) == 1


def test_a_record_too_large_to_dead_letter_whole_is_dead_lettered_without_its_value(
    sessions: sessionmaker[Session],
) -> None:
    """Another producer wrote a record near the broker's limit: with the ``dlq_*`` headers it
    would not fit, and sending it whole would fail forever and hold the partition."""
    good = _record(0, "huge")
    value = b"\xff" * (MAX_EVENT_BYTES - 100)  # no envelope decodes from it: poison
    kafka = _FakeKafka([_Record(TOPIC, 0, 0, b"k", value, good.headers), _record(1, "after")])
    dlq = _FakeDlq()
    _run_until(kafka, sessions, _apply, lambda: kafka.committed == 2, dlq=dlq)

    [(_, headers)] = dlq.sent
    assert dlq.values == [b""]
    omitted = dict(headers)["dlq_value_omitted"].decode()
    assert omitted == f"{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()}"
    assert dict(headers)["dlq_offset"] == b"0", "where the original still is"
    assert _effects(sessions) == ["after"], "the partition moved on"


@pytest.mark.parametrize(
    "event_id",
    ["x" * 200, "has space", "new\nline", "-leading-dash"],
    ids=["200-chars", "space", "newline", "leading-dash"],
)
def test_an_invalid_ce_id_is_dead_lettered_without_calling_the_handler(
    sessions: sessionmaker[Session], event_id: str
) -> None:
    good = _record(0, "ok")
    headers = [(k, event_id.encode() if k == "ce_id" else v) for k, v in good.headers]
    kafka = _FakeKafka([_record(0, "ignored", headers=headers), _record(1, "after")])
    dlq = _FakeDlq()
    _run_until(kafka, sessions, _apply, lambda: kafka.committed == 2, dlq=dlq)

    [(_, dead_headers)] = dlq.sent
    assert b"ce_id" in dict(dead_headers)["dlq_error"]
    assert dict(dead_headers)["dlq_attempts"] == b"0"
    assert _effects(sessions) == ["after"], "the loop went on"


def test_a_failing_dlq_publish_is_retried_and_the_offset_waits(
    sessions: sessionmaker[Session],
) -> None:
    undecodable = _Record(TOPIC, 0, 0, b"k", b"\xff", [("ce_id", b"x")])
    kafka = _FakeKafka([undecodable, _record(1, "after")])
    dlq = _FakeDlq(failures_left=3)
    commits: list[int] = []
    original_commit = kafka.commit

    def recording_commit(offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        commits.append(offsets[PARTITION].offset)
        original_commit(offsets)

    kafka.commit = recording_commit  # type: ignore[method-assign]
    loop = _run_until(kafka, sessions, _apply, lambda: kafka.committed == 2, dlq=dlq)

    assert len(dlq.sent) == 1, "sent once the DLQ answered, not before"
    assert commits == [1, 2], "no offset was committed while the DLQ was down"
    assert loop.restarts == 0, "the loop itself never died"
    with sessions() as session:
        marker = session.get(DeadLetteredRecord, ("g", TOPIC, 0, 0))
    assert marker is not None


def test_a_record_already_dead_lettered_is_not_sent_twice(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session, session.begin():
        session.add(
            DeadLetteredRecord(
                consumer_group="g",
                topic=TOPIC,
                partition=0,
                offset=0,
                event_id="x",
                dead_lettered_at=datetime.now(UTC),
            )
        )
    undecodable = _Record(TOPIC, 0, 0, b"k", b"\xff", [("ce_id", b"x")])
    kafka = _FakeKafka([undecodable])
    dlq = _FakeDlq()
    _run_until(kafka, sessions, _apply, lambda: kafka.committed == 1, dlq=dlq)
    assert dlq.sent == [], "a redelivery after a lost commit is not dead-lettered again"


def test_a_replayed_event_is_applied_although_its_first_copy_was_dead_lettered(
    sessions: sessionmaker[Session],
) -> None:
    """The DLQ marker is by position: the replay is a new record and applies (once)."""
    kafka = _FakeKafka([_record(0, "e"), _record(1, "e"), _record(2, "e")])
    failures = iter([True, True, True])

    def handler(event: ReceivedEvent[Any], session: Session) -> None:
        if event.offset == 0 and next(failures, False):
            raise RuntimeError("a bug, fixed before the replay")
        _apply(event, session)

    dlq = _FakeDlq()
    _run_until(kafka, sessions, handler, lambda: kafka.committed == 3, dlq=dlq)
    assert len(dlq.sent) == 1
    assert _effects(sessions) == ["e"], "the replay applied, its duplicate was skipped"


def test_the_loop_restarts_after_a_crash_and_reports_unhealthy_meanwhile(
    sessions: sessionmaker[Session],
) -> None:
    consumers = [_FakeKafka([_record(0, "e0")], crash_on_poll=2), _FakeKafka([_record(0, "e0")])]
    made: list[_FakeKafka] = []

    def factory() -> _FakeKafka:
        made.append(consumers[len(made)])
        return made[-1]

    health: list[bool] = []
    registry = CollectorRegistry()
    loop = _run_until(
        consumers[0],
        sessions,
        _apply,
        lambda: len(made) == 2 and health[-1:] == [True],
        health=health,
        factory=factory,
        registry=registry,
    )
    assert health[:2] == [False, True], "down after the crash, up once it polls again"
    assert loop.restarts == 1
    assert consumers[0].closed
    assert _effects(sessions) == ["e0"], "the redelivery after the restart was a duplicate"
    assert registry.get_sample_value("tuneline_kafka_consumer_restarts_total", {"group": "g"}) == 1
    assert registry.get_sample_value("tuneline_kafka_consumer_up", {"group": "g"}) == 1


def test_no_broker_at_start_is_waited_for_not_reported_as_a_crash(
    sessions: sessionmaker[Session],
) -> None:
    kafka = _FakeKafka([_record(0, "e0")])
    attempts: list[int] = []

    def factory() -> _FakeKafka:
        attempts.append(1)
        if len(attempts) < 3:
            raise KafkaTimeoutError("Unable to bootstrap")
        return kafka

    health: list[bool] = []
    loop = _run_until(
        kafka, sessions, _apply, lambda: kafka.committed == 1, health=health, factory=factory
    )
    assert False not in health
    assert loop.restarts == 0


def test_a_dead_letter_whose_marker_fails_to_commit_is_not_sent_twice(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    undecodable = _Record(TOPIC, 0, 0, b"k", b"\xff", [("ce_id", b"x")])
    kafka = _FakeKafka([undecodable, _record(1, "after")])
    dlq = _FakeDlq()
    failures = [sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked"))]
    merge = Session.merge

    def locked_once(self: Session, instance: Any, **kwargs: Any) -> Any:
        if isinstance(instance, DeadLetteredRecord) and failures:
            raise failures.pop()
        return merge(self, instance, **kwargs)

    monkeypatch.setattr(Session, "merge", locked_once)
    _run_until(kafka, sessions, _apply, lambda: kafka.committed == 2, dlq=dlq)

    assert failures == [], "the marker's first commit failed"
    assert len(dlq.sent) == 1, "the retry recorded the marker without sending again"
    with sessions() as session:
        assert session.get(DeadLetteredRecord, ("g", TOPIC, 0, 0)) is not None


def test_an_event_from_another_source_than_its_producer_is_dead_lettered_unapplied(
    sessions: sessionmaker[Session],
) -> None:
    """A record a foreign client wrote (wrong ``ce_source``) never reaches the handler."""
    kafka = _FakeKafka([_record(0, "forged", source="tuneline/dataset"), _record(1, "genuine")])
    dlq = _FakeDlq()
    registry = CollectorRegistry()
    _run_until(
        kafka,
        sessions,
        _apply,
        lambda: kafka.committed == 2,
        dlq=dlq,
        registry=registry,
        producers={TOPIC: "tuneline/test"},
    )
    assert _effects(sessions) == ["genuine"]
    [(topic, dead_headers)] = dlq.sent
    assert topic == f"{TOPIC}.dlq"
    error = dict(dead_headers)["dlq_error"].decode()
    assert error.startswith("UntrustedEventSource:")
    assert "'tuneline/dataset' is not 'tuneline/test'" in error
    refused = registry.get_sample_value(
        "tuneline_events_refused_total", {"topic": TOPIC, "reason": "untrusted_source"}
    )
    assert refused == 1


def test_an_event_type_without_a_producer_is_refused(sessions: sessionmaker[Session]) -> None:
    kafka = _FakeKafka([_record(0, "orphan"), _record(1, "also")])
    dlq = _FakeDlq()
    _run_until(kafka, sessions, _apply, lambda: kafka.committed == 2, dlq=dlq, producers={})
    assert _effects(sessions) == []
    assert len(dlq.sent) == 2
    assert b"no service produces" in dict(dlq.sent[0][1])["dlq_error"]


def test_a_consumer_whose_commits_are_refused_past_its_session_timeout_is_replaced(
    sessions: sessionmaker[Session],
) -> None:
    """kafka-python 3.0.12 once lost its membership and never rejoined: it kept fetching and
    every commit failed. The loop closes such a consumer and starts a fresh one."""
    memberless = _FakeKafka([_record(0, "e0")], memberless=True, config={"session_timeout_ms": 200})
    fresh = _FakeKafka([_record(0, "e0"), _record(1, "e1")])
    made: list[_FakeKafka] = []

    def factory() -> _FakeKafka:
        made.append([memberless, fresh][len(made)])
        return made[-1]

    health: list[bool] = []
    loop = _run_until(
        memberless,
        sessions,
        _apply,
        lambda: fresh.committed == 2,
        health=health,
        factory=factory,
    )
    assert loop.restarts == 1
    assert memberless.closed
    assert health[:2] == [False, True], "down while replaced, up once the new one polls"
    effects = _effects(sessions)
    assert len(effects) == len(set(effects)), "the redeliveries were duplicates"
    assert {"e0", "e1"} <= set(effects)


def test_commits_refused_during_a_rebalance_keep_the_consumer(
    sessions: sessionmaker[Session],
) -> None:
    """kafka-python rejoins on the next poll: a few refused commits are no reason to restart."""
    kafka = _FakeKafka(
        [_record(i, f"e{i}") for i in range(4)],
        commit_errors=[RebalanceInProgressError(), CommitFailedError(), RebalanceInProgressError()],
    )
    loop = _run_until(kafka, sessions, _apply, lambda: kafka.committed == 4)
    assert kafka.commit_errors == []
    assert loop.restarts == 0
    assert _effects(sessions) == ["e0", "e1", "e2", "e3"]
