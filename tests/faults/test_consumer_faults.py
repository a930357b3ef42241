"""Faults under the consumer loop, on a real broker: nothing acknowledged is lost or doubled.

Each scenario runs the shared event plumbing end to end (:class:`~tests.fixtures.broker_faults.
EventFlow`: outbox → relay → Kafka → consumer loop → effect rows) and counts acknowledged event
ids against effects. The faults are real: a SQLite write lock held by another connection, a
PostgreSQL database that refuses connections, a DLQ topic the broker refuses to write, a group
coordinator that removes the consumer's member. They are released on a positive signal (what
the loop logged), never after a guessed sleep. One broker is enough: the shared development
broker where ``TUNELINE_KAFKA_BOOTSTRAP`` names one (every flow has its own consumer group).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, MemberToRemove
from kafka.errors import NoError
from kafka.partitioner.default import murmur2
from sqlalchemy import select
from sqlalchemy.engine import make_url

from shared.events import DeadLetteredRecord, GroupMembershipLost, dlq_topic_for
from tests.fixtures.broker_faults import FLOW_TOPIC, SUBJECTS, EventFlow, partitions
from tests.fixtures.events import header, read_published
from tuneline.devtools.waiting import eventually

pytestmark = pytest.mark.integration

#: Events per scenario, half before the fault and half during it.
EVENTS = 48
#: How long the database stays unavailable (issue 14: "database unavailable for 5 s").
OUTAGE_SECONDS = 5.0


class ConsumerReports(logging.Handler):
    """The consumer loop's log records, kept: the signals the scenarios wait on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._records: list[logging.LogRecord] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self._records.append(record)

    def count(self, message: str, **extra: str) -> int:
        with self._lock:
            return sum(
                1
                for r in self._records
                if r.getMessage() == message
                and all(getattr(r, k, None) == v for k, v in extra.items())
            )

    def restart_causes(self) -> list[type[BaseException]]:
        """What made the loop restart its consumer, in order."""
        with self._lock:
            return [
                r.exc_info[0]
                for r in self._records
                if r.getMessage() == "consumer loop crashed; restarting"
                and r.exc_info
                and r.exc_info[0] is not None
            ]

    def transient_retries(self) -> int:
        return self.count("event handler failed", failure="transient")

    def failed_dead_letterings(self) -> int:
        return self.count(
            "dead-lettering failed; the record is retried and its offset stays uncommitted"
        )


@pytest.fixture
def reports() -> Iterator[ConsumerReports]:
    handler = ConsumerReports()
    logger = logging.getLogger("shared.events.consumer")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def _running(flow: EventFlow) -> Iterator[EventFlow]:
    flow.start()
    try:
        yield flow
    finally:
        flow.stop()


def _dead_lettered(flow: EventFlow) -> list[DeadLetteredRecord]:
    with flow.effects() as session:
        return list(session.scalars(select(DeadLetteredRecord)))


# -- the database goes away under the consumer -----------------------------------------------


@contextlib.contextmanager
def _sqlite_write_locked(url: str) -> Iterator[None]:
    """Another connection holds SQLite's write lock: every write elsewhere is "locked"."""
    path = make_url(url).database
    assert path
    holder = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def _libpq(url: str, database: str) -> str:
    parsed = make_url(url).set(drivername="postgresql", database=database, query={})
    return parsed.render_as_string(hide_password=False)


@contextlib.contextmanager
def _postgresql_refusing(url: str) -> Iterator[None]:
    """The consumer's database refuses connections and its open ones are terminated: what a
    failover or a restart looks like from the service."""
    database = make_url(url).database
    assert database
    with psycopg.connect(_libpq(url, "postgres"), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_database_outage_under_the_consumer_is_retried_never_dead_lettered(
    engine: str,
    kafka_bootstrap: str,
    tmp_path: Path,
    reports: ConsumerReports,
    request: pytest.FixtureRequest,
) -> None:
    if engine == "sqlite":
        # The services wait 30 s for a SQLite lock; a lock longer than this flow's 200 ms wait
        # is what a longer lock is to a service: "database is locked", an error to retry.
        flow = EventFlow(kafka_bootstrap, tmp_path / "flow", effects_busy_timeout_ms=200)
        outage = _sqlite_write_locked
    else:
        effects_url = str(request.getfixturevalue("postgresql_url"))
        flow = EventFlow(kafka_bootstrap, tmp_path / "flow", effects_url=effects_url)
        outage = _postgresql_refusing
    with _running(flow):
        flow.stage(EVENTS // 2)
        eventually(flow.all_applied, timeout=120, what="the flow applied before the outage")

        began = time.monotonic()
        with outage(flow.effects_url):
            during = flow.stage(EVENTS - EVENTS // 2)
            eventually(
                lambda: reports.transient_retries() >= 3,
                timeout=60,
                what="the consumer retrying the unavailable database",
            )
            # the outage lasts its 5 s even where the retries came sooner
            threading.Event().wait(max(0.0, OUTAGE_SECONDS - (time.monotonic() - began)))
            if engine == "sqlite":  # readable while locked (WAL); PostgreSQL refuses us too
                assert not set(during) & set(flow.applications()), "nothing applied while down"

        eventually(flow.all_applied, timeout=120, what="every event applied after the outage")
        count = flow.count()
        assert count.acknowledged == EVENTS
        assert (count.lost, count.doubled) == (0, 0), count
        assert _dead_lettered(flow) == [], "a valid event is never dead-lettered"
        assert reports.count("message sent to DLQ") == 0
        assert flow.consumer.restarts == 0
        assert flow.consumer.healthy


# -- the DLQ refuses the poison event --------------------------------------------------------


def _alter_topic(bootstrap: str, topic: str, configs: dict[str, Any], *, reset: bool) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fault-admin")
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs)
        if reset:
            admin.reset_configs([resource])
        else:
            admin.alter_configs([resource])
    finally:
        admin.close()


@contextlib.contextmanager
def _refusing_writes(bootstrap: str, topic: str) -> Iterator[None]:
    """The broker refuses every record for ``topic`` (a 1-byte ``max.message.bytes``)."""
    _alter_topic(bootstrap, topic, {"max.message.bytes": "1"}, reset=False)
    try:
        yield
    finally:
        _alter_topic(bootstrap, topic, {"max.message.bytes": None}, reset=True)


def _partition_of(bootstrap: str, key: bytes) -> int:
    """Where the producers' default partitioner puts ``key`` on the flow's topic."""
    count = len(partitions(bootstrap, FLOW_TOPIC))
    return (murmur2(key) & 0x7FFFFFFF) % count


def _committed(flow: EventFlow, partition: TopicPartition) -> int | None:
    """The flow's group committed offset on ``partition`` (read without joining the group)."""
    reader = KafkaConsumer(
        bootstrap_servers=flow.bootstrap,
        group_id=flow.consumer.group_id,
        enable_auto_commit=False,
    )
    try:
        return reader.committed(partition)
    finally:
        reader.close()


def test_a_failing_dlq_holds_the_poison_event_until_it_can_be_dead_lettered_once(
    kafka_bootstrap: str, tmp_path: Path, reports: ConsumerReports
) -> None:
    with _running(EventFlow(kafka_bootstrap, tmp_path / "flow")) as flow:
        flow.stage(SUBJECTS)
        eventually(flow.all_applied, timeout=120, what="the flow applied before the poison")

        with _refusing_writes(kafka_bootstrap, dlq_topic_for(FLOW_TOPIC)):
            key = f"datasets/fault-{flow.run}-0".encode()  # the subject of every 24th event
            poison_id = f"poison-{flow.run}"
            poison = flow.publisher.send_raw(
                FLOW_TOPIC,
                key=key,
                value=b"\xff not an event",
                headers=[("ce_id", poison_id.encode())],
            ).get(timeout=30)  # type: ignore[attr-defined]
            assert poison.partition == _partition_of(kafka_bootstrap, key)
            after = flow.stage(SUBJECTS)
            held = {
                i
                for i in after
                if _partition_of(kafka_bootstrap, _key_of(flow, i)) == poison.partition
            }
            free = set(after) - held
            eventually(
                lambda: free <= set(flow.applications()),
                timeout=120,
                what="the events on the other partitions applied",
            )
            eventually(
                lambda: reports.failed_dead_letterings() >= 3,
                timeout=60,
                what="the consumer retrying the refused DLQ write",
            )
            assert not held & set(flow.applications()), "nothing overtakes the poison event"
            stuck = TopicPartition(FLOW_TOPIC, poison.partition)
            assert _committed(flow, stuck) == poison.offset, "the poison's offset uncommitted"
            assert flow.consumer.healthy, "the loop lives on, serving"
            assert flow.consumer.restarts == 0
            assert _dead_lettered(flow) == []

        eventually(flow.all_applied, timeout=120, what="the held events applied after the DLQ")
        # the group committed past the poison, which it does only once the DLQ acknowledged it:
        # every copy there will be is on the DLQ topic by now
        eventually(
            lambda: (_committed(flow, stuck) or 0) > poison.offset,
            timeout=120,
            what="the poison's offset committed",
        )
        dead = read_published(
            kafka_bootstrap,
            dlq_topic_for(FLOW_TOPIC),
            lambda r: (
                header(r, "ce_id") == poison_id
                and header(r, "dlq_consumer_group") == flow.consumer.group_id
            ),
        )
        assert len(dead) == 1, "dead-lettered exactly once"
        assert header(dead[0], "dlq_offset") == str(poison.offset)
        [marker] = _dead_lettered(flow)
        assert (marker.partition, marker.offset) == (poison.partition, poison.offset)
        count = flow.count()
        assert count.acknowledged == 2 * SUBJECTS
        assert (count.lost, count.doubled) == (0, 0), count


def _key_of(flow: EventFlow, event_id: str) -> bytes:
    """The record key (the subject) :meth:`EventFlow.stage` gave the event ``event_id``."""
    number = flow.acknowledged.index(event_id)
    return f"datasets/fault-{flow.run}-{number % SUBJECTS}".encode()


# -- the group loses the consumer's member ---------------------------------------------------


def _members(bootstrap: str, group: str) -> list[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fault-admin")
    try:
        described = admin.describe_groups([group])[group]
    finally:
        admin.close()
    return [str(m["member_id"]) for m in described.get("members") or []]


def _remove_members(bootstrap: str, group: str) -> list[str]:
    """Have the coordinator remove every member of ``group`` (KIP-345's admin call); their
    ids."""
    members = _members(bootstrap, group)
    assert members, f"{group} has no member to remove"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fault-admin")
    try:
        results = admin.remove_group_members(group, [MemberToRemove(member_id=m) for m in members])
    finally:
        admin.close()
    assert all(error is NoError for error in results.values()), results
    return members


def test_a_member_removed_mid_event_rejoins_and_later_events_apply(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    with _running(EventFlow(kafka_bootstrap, tmp_path / "flow")) as flow:
        group = flow.consumer.group_id
        flow.stage(EVENTS // 2)
        eventually(flow.all_applied, timeout=120, what="the flow applied before the removal")

        flow.handler_gate.clear()
        flow.stage(1)
        assert flow.handler_waiting.wait(60), "the handler never started"
        removed = _remove_members(kafka_bootstrap, group)
        flow.handler_gate.set()  # its commit now finds the member gone

        flow.stage(EVENTS // 2 - 1)
        eventually(flow.all_applied, timeout=120, what="every event applied after the removal")
        rejoined = eventually(
            lambda: [m for m in _members(kafka_bootstrap, group) if m not in removed],
            timeout=60,
            what="the consumer back in its group as a new member",
        )
        assert len(rejoined) == 1
        count = flow.count()
        assert count.acknowledged == EVENTS
        assert (count.lost, count.doubled) == (0, 0), count


def test_a_consumer_that_never_rejoins_its_group_is_replaced(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reports: ConsumerReports,
) -> None:
    """kafka-python 3.0.12 once lost its membership and never rejoined: it kept fetching and
    failed every commit, at 80% CPU. The first consumer here is made to behave so once it has
    joined (its coordinator never again sees a need to rejoin); the loop notices the commits
    refused past the session timeout and starts a new consumer, which joins."""
    flow = EventFlow(kafka_bootstrap, tmp_path / "flow")
    made: list[KafkaConsumer] = []

    def consumer_factory() -> KafkaConsumer:
        # the loop's settings, with the broker's smallest session timeout (kafka-python's
        # default is 45 s): the loop gives up on a member after that long
        made.append(
            KafkaConsumer(
                bootstrap_servers=kafka_bootstrap,
                group_id=flow.consumer.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=6_000,
                heartbeat_interval_ms=1_000,
            )
        )
        return made[-1]

    monkeypatch.setattr(flow.consumer, "_consumer_factory", consumer_factory)
    with _running(flow):
        group = flow.consumer.group_id
        flow.stage(EVENTS // 2)
        eventually(flow.all_applied, timeout=120, what="the flow applied before the removal")
        [joined] = made
        joined._coordinator.need_rejoin = lambda: False
        removed = _remove_members(kafka_bootstrap, group)

        # keep events coming (each one a refused commit) until the loop gives up on the member
        eventually(
            lambda: bool(flow.stage(1)) and flow.consumer.restarts >= 1,
            timeout=120,
            what="the loop replacing its memberless consumer",
        )
        flow.stage(EVENTS // 2)
        eventually(flow.all_applied, timeout=120, what="every event applied by the new consumer")
        assert len(made) == 2
        assert reports.restart_causes() == [GroupMembershipLost]
        assert [m for m in _members(kafka_bootstrap, group) if m not in removed]
        count = flow.count()
        assert (count.lost, count.doubled) == (0, 0), count
        assert flow.consumer.healthy
