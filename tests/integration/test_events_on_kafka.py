"""The event plumbing against a real Kafka broker: envelope, outbox, consumer loop, DLQ."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Integer, String, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from shared.db import create_database_engine, create_schema, create_session_factory
from shared.events import (
    ConsumerLoop,
    Envelope,
    EventMetrics,
    KafkaEventPublisher,
    OutboxEvent,
    OutboxRelay,
    ReceivedEvent,
    Subscription,
    dlq_topic_for,
    ensure_topics,
    stage_event,
    topic_for,
)
from tests.fixtures.events import (
    header,
    outbox_published,
    read_published,
    read_records,
    start_group_at_end,
)
from tuneline.dataset.v1 import events_pb2
from tuneline.devtools.waiting import eventually

pytestmark = pytest.mark.integration

EVENT = events_pb2.DatasetVersioned
TOPIC = topic_for(EVENT)


class _EffectBase(DeclarativeBase):
    pass


class Effect(_EffectBase):
    """What a test handler does: one row per application (so a double apply shows)."""

    __tablename__ = "test_effects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str] = mapped_column(String(64))


@pytest.fixture
def effect_sessions(database_url: str) -> sessionmaker[Session]:
    engine = create_database_engine(database_url)
    create_schema(engine, [_EffectBase.metadata])
    return create_session_factory(engine)


@pytest.fixture
def publisher(kafka_bootstrap: str):
    ensure_topics(kafka_bootstrap, [TOPIC])
    publisher = KafkaEventPublisher(kafka_bootstrap, client_id="test-publisher")
    yield publisher
    publisher.close()


def _event(subject: str, rows: int = 3) -> events_pb2.DatasetVersioned:
    dataset = subject.split("/versions/", maxsplit=1)[0]
    return EVENT(dataset_version=subject, dataset=dataset, row_count=rows)


def _effects(sessions: sessionmaker[Session], subject: str) -> list[Effect]:
    with sessions() as session:
        return list(session.scalars(select(Effect).where(Effect.subject == subject)))


def test_round_trip_carries_every_cloudevents_header(kafka_bootstrap, publisher, unique):
    subject = f"datasets/rt-{unique}/versions/v1"
    envelope = Envelope.wrap(_event(subject, rows=42), source="tuneline/dataset", subject=subject)
    publisher.publish(envelope)

    [record] = read_records(kafka_bootstrap, TOPIC, lambda r: r.key == subject.encode(), expected=1)
    assert record.key == subject.encode()
    assert header(record, "ce_specversion") == "1.0"
    assert header(record, "ce_id") == envelope.id
    assert header(record, "ce_source") == "tuneline/dataset"
    assert header(record, "ce_type") == "tuneline.dataset.v1.DatasetVersioned"
    assert header(record, "ce_subject") == subject
    assert header(record, "ce_time").endswith("Z")
    assert header(record, "content-type") == "application/protobuf"
    assert header(record, "traceparent").startswith("00-")
    decoded = Envelope.from_headers(record.headers, record.value).decode(EVENT)
    assert decoded.row_count == 42
    assert decoded.dataset_version == subject


_CRASHING_PUBLISHER = textwrap.dedent(
    """
    import os, sys
    from shared.db import create_database_engine, create_schema, create_session_factory
    from shared.events import OutboxRelay, stage_event
    from tuneline.dataset.v1 import events_pb2

    url, subject = sys.argv[1], sys.argv[2]
    engine = create_database_engine(url)
    create_schema(engine)
    sessions = create_session_factory(engine)
    with sessions() as session, session.begin():
        stage_event(session, events_pb2.DatasetVersioned(dataset_version=subject),
                    source="tuneline/test", subject=subject)
    print("committed", flush=True)

    class DiesBeforeSending:
        def send(self, envelope):
            os._exit(17)  # the process dies after the commit, before anything reaches Kafka

    OutboxRelay(sessions, DiesBeforeSending()).publish_pending()
    """
)


def test_outbox_survives_a_crash_between_commit_and_send(
    kafka_bootstrap, publisher, database_url, unique
):
    url = database_url
    subject = f"datasets/crash-{unique}/versions/v1"
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_PUBLISHER, url, subject],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == 17, crashed.stderr
    assert "committed" in crashed.stdout

    # The service starts again: a fresh relay on the same database publishes what was pending.
    engine = create_database_engine(url)
    sessions = create_session_factory(engine)
    relay = OutboxRelay(sessions, publisher)
    assert relay.publish_pending() == 1
    assert relay.publish_pending() == 0  # marked sent: a second pass sends nothing

    # publish_pending returned once Kafka acknowledged: everything sent is on the broker
    records = read_published(kafka_bootstrap, TOPIC, lambda r: r.key == subject.encode())
    assert len(records) == 1, "the event must arrive exactly once"
    engine.dispose()


def _consumer(kafka_bootstrap, sessions, handler, publisher, group, *, registry=None):
    return ConsumerLoop(
        bootstrap=kafka_bootstrap,
        group_id=group,
        subscriptions=[Subscription(EVENT, handler)],
        session_factory=sessions,
        dlq_publisher=publisher,
        metrics=EventMetrics(registry or CollectorRegistry()),
        max_attempts=3,
        retry_backoff_seconds=0.05,
    )


def _record_effect(event: ReceivedEvent, session: Session) -> None:
    session.add(Effect(subject=event.envelope.subject, event_id=event.envelope.id))


def test_the_same_event_delivered_twice_applies_once(
    kafka_bootstrap, publisher, effect_sessions, unique
):
    subject = f"datasets/dup-{unique}/versions/v1"
    envelope = Envelope.wrap(_event(subject), source="tuneline/test", subject=subject)
    # Same key, so the marker sits behind both copies in the same partition.
    marker = Envelope.wrap(_event(subject), source="tuneline/test", subject=subject)
    publisher.publish(envelope)
    publisher.publish(envelope)  # redelivery: same ce_id
    publisher.publish(marker)

    loop = _consumer(kafka_bootstrap, effect_sessions, _record_effect, publisher, f"dup-{unique}")
    loop.start()
    try:
        eventually(
            lambda: marker.id in {e.event_id for e in _effects(effect_sessions, subject)},
            timeout=120,
            what="the marker event to apply",
        )
    finally:
        loop.stop()
    applied = [e.event_id for e in _effects(effect_sessions, subject)]
    assert sorted(applied) == sorted([envelope.id, marker.id])


def test_a_failing_handler_dead_letters_and_the_partition_moves_on(
    kafka_bootstrap, publisher, effect_sessions, unique
):
    poison = f"datasets/poison-{unique}/versions/v1"
    bad = Envelope.wrap(_event(poison), source="tuneline/test", subject=poison)
    calls: list[str] = []

    def handler(event: ReceivedEvent, session: Session) -> None:
        calls.append(event.envelope.id)
        if event.envelope.id == bad.id:
            session.add(Effect(subject=poison, event_id="must-roll-back"))
            raise RuntimeError("this handler always fails on poison")
        _record_effect(event, session)

    # The group starts at the topic's end: a shared broker may hold other runs' poison.
    start_group_at_end(kafka_bootstrap, f"dlq-{unique}", [TOPIC])
    # Same key for all three, so they share one partition and the later ones sit behind poison.
    later = [
        Envelope(
            id=f"{unique}-later-{i}",
            source="tuneline/test",
            type=TOPIC,
            subject=poison,
            time=bad.time,
            payload=_event(f"{poison}-later-{i}").SerializeToString(),
        )
        for i in range(2)
    ]
    publisher.publish(bad)
    for envelope in later:
        publisher.publish(envelope)

    registry = CollectorRegistry()
    loop = _consumer(
        kafka_bootstrap, effect_sessions, handler, publisher, f"dlq-{unique}", registry=registry
    )
    loop.start()
    try:
        eventually(
            lambda: len(_effects(effect_sessions, poison)) == 2,
            timeout=120,
            what="both effects of the poison subject",
        )
    finally:
        loop.stop()

    assert calls.count(bad.id) == 3, "retried max_attempts times before giving up"
    effects = _effects(effect_sessions, poison)
    assert sorted(e.event_id for e in effects) == sorted(e.id for e in later)
    assert "must-roll-back" not in {e.event_id for e in effects}, "failed attempts left no state"

    # other groups on a shared broker may dead-letter the same record: read this group's copy
    [dead] = read_records(
        kafka_bootstrap,
        dlq_topic_for(TOPIC),
        lambda r: (
            header(r, "ce_id") == bad.id and header(r, "dlq_consumer_group") == f"dlq-{unique}"
        ),
        expected=1,
    )
    assert dead.value == bad.payload, "original bytes are kept"
    assert dead.key == bad.key
    assert header(dead, "dlq_topic") == TOPIC
    assert header(dead, "dlq_partition").isdigit()
    assert header(dead, "dlq_offset").isdigit()
    assert header(dead, "dlq_attempts") == "3"
    assert "RuntimeError: this handler always fails on poison" in header(dead, "dlq_error")
    assert registry.get_sample_value("tuneline_events_dead_lettered_total", {"topic": TOPIC}) == 1.0


def test_an_undecodable_message_goes_to_the_dlq_without_retries(
    kafka_bootstrap, publisher, effect_sessions, unique
):
    key = f"datasets/garbage-{unique}/versions/v1"
    publisher.send_raw(
        TOPIC, key=key.encode(), value=b"\xff not protobuf", headers=[("ce_id", b"x")]
    ).get(timeout=30)
    marker = Envelope.wrap(_event(key), source="tuneline/test", subject=key)  # same partition
    publisher.publish(marker)

    loop = _consumer(kafka_bootstrap, effect_sessions, _record_effect, publisher, f"bad-{unique}")
    loop.start()
    try:
        eventually(lambda: _effects(effect_sessions, key), timeout=120, what="the effect")
    finally:
        loop.stop()
    [dead] = read_records(
        kafka_bootstrap,
        dlq_topic_for(TOPIC),
        lambda r: r.key == key.encode() and header(r, "dlq_consumer_group") == f"bad-{unique}",
        expected=1,
    )
    assert "missing CloudEvents headers" in header(dead, "dlq_error")
    assert header(dead, "dlq_attempts") == "0"


def test_relay_thread_publishes_staged_events_and_tracks_pending(
    kafka_bootstrap, publisher, sqlite_sessions, unique
):
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)
    # it would not poll within the test: only the wake can make it publish
    relay = OutboxRelay(sqlite_sessions, publisher, metrics=metrics, poll_seconds=3600)
    relay.start()
    subject = f"datasets/relay-{unique}/versions/v1"
    try:
        with sqlite_sessions() as session, session.begin():
            for rows in range(5):
                stage_event(session, _event(subject, rows), source="tuneline/test", subject=subject)
        relay.wake()
        eventually(
            lambda: outbox_published(sqlite_sessions), timeout=60, what="the relay to publish all"
        )
        records = read_published(kafka_bootstrap, TOPIC, lambda r: r.key == subject.encode())
    finally:
        relay.stop()
    rows_in_arrival_order = [EVENT.FromString(r.value).row_count for r in records]
    assert rows_in_arrival_order == [0, 1, 2, 3, 4], "one key's events arrive in commit order"
    assert len(records) == 5
    assert registry.get_sample_value("tuneline_events_published_total", {"topic": TOPIC}) == 5.0
    with sqlite_sessions() as session:
        pending = session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        )
    assert pending == 0


def test_a_database_outage_is_retried_not_dead_lettered(
    kafka_bootstrap, publisher, effect_sessions, unique
):
    """A handler whose database is locked five times in a row applies the event once; the
    DLQ receives nothing (the event was valid all along)."""
    subject = f"datasets/locked-{unique}/versions/v1"
    envelope = Envelope.wrap(_event(subject), source="tuneline/test", subject=subject)
    marker = Envelope.wrap(_event(subject), source="tuneline/test", subject=subject)
    group = f"locked-{unique}"
    start_group_at_end(kafka_bootstrap, group, [TOPIC])
    calls: list[str] = []

    def locked_five_times(event: ReceivedEvent, session: Session) -> None:
        calls.append(event.envelope.id)
        if event.envelope.id == envelope.id and calls.count(envelope.id) <= 5:
            raise OperationalError("INSERT INTO test_effects", {}, Exception("database is locked"))
        _record_effect(event, session)

    publisher.publish(envelope)
    publisher.publish(marker)  # same key: it waits behind the locked one
    loop = _consumer(kafka_bootstrap, effect_sessions, locked_five_times, publisher, group)
    loop.start()
    try:
        eventually(
            lambda: marker.id in {e.event_id for e in _effects(effect_sessions, subject)},
            timeout=120,
            what="the marker event to apply",
        )
    finally:
        loop.stop()

    assert [e.event_id for e in _effects(effect_sessions, subject)] == [envelope.id, marker.id]
    assert calls.count(envelope.id) == 6
    # The DLQ holds nothing of this run: read it to its end (the marker proves we are past it).
    dead = read_published(
        kafka_bootstrap,
        dlq_topic_for(TOPIC),
        lambda r: (
            header(r, "ce_id") in {envelope.id, marker.id}
            and header(r, "dlq_consumer_group") == group
        ),
    )
    assert dead == []
