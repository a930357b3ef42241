"""``tuneline dlq list|show|replay`` on the real broker, with a real consumer loop.

A handler fails on an event (a bug), the loop dead-letters it; the bug is fixed; the replay
applies the event once, and a second replay changes nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from typer.testing import CliRunner

from shared.db import create_database_engine, create_schema, create_session_factory
from shared.events import (
    ConsumerLoop,
    Envelope,
    EventMetrics,
    KafkaEventPublisher,
    ReceivedEvent,
    Subscription,
    ensure_topics,
    topic_for,
)
from tests.fixtures.events import start_group_at_end
from tuneline.cli.main import app
from tuneline.dataset.v1 import events_pb2
from tuneline.devtools.waiting import eventually

pytestmark = pytest.mark.integration

EVENT = events_pb2.DatasetVersioned
TOPIC = topic_for(EVENT)


class _Base(DeclarativeBase):
    pass


class Applied(_Base):
    __tablename__ = "dlq_cli_applied"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64))


def _applied(sessions: sessionmaker[Session], event_id: str) -> int:
    with sessions() as session:
        return len(list(session.scalars(select(Applied).where(Applied.event_id == event_id))))


def test_list_show_and_replay_a_dead_letter(kafka_bootstrap: str, tmp_path: Path, unique: str):
    ensure_topics(kafka_bootstrap, [TOPIC])
    engine = create_database_engine(f"sqlite:///{tmp_path / 'dlq.db'}")
    create_schema(engine, [_Base.metadata])
    sessions = create_session_factory(engine)
    group = f"dlq-cli-{unique}"
    start_group_at_end(kafka_bootstrap, group, [TOPIC])
    subject = f"datasets/dlq-cli-{unique}/versions/v1"
    poison = Envelope.wrap(
        EVENT(dataset_version=subject, row_count=7), source="tuneline/test", subject=subject
    )
    fixed = threading.Event()

    def handler(event: ReceivedEvent, session: Session) -> None:
        if event.envelope.id == poison.id and not fixed.is_set():
            raise RuntimeError("a bug in the handler")
        session.add(Applied(event_id=event.envelope.id))

    publisher = KafkaEventPublisher(kafka_bootstrap, client_id="test-dlq-cli")
    loop = ConsumerLoop(
        bootstrap=kafka_bootstrap,
        group_id=group,
        subscriptions=[Subscription(EVENT, handler)],
        session_factory=sessions,
        dlq_publisher=publisher,
        metrics=EventMetrics(CollectorRegistry()),
        max_attempts=2,
        retry_backoff_seconds=0.05,
    )
    runner = CliRunner()
    env = {"TUNELINE_KAFKA_BOOTSTRAP": kafka_bootstrap}
    loop.start()
    try:
        publisher.publish(poison)

        def listed() -> str | None:
            result = runner.invoke(app, ["dlq", "list", TOPIC, "--group", group], env=env)
            assert result.exit_code == 0, result.output
            return result.output if poison.id in result.output else None

        eventually(listed, timeout=120, what="the poison event in the DLQ")
        listing = listed() or ""
        assert "RuntimeError: a bug in the handler" in listing
        assert "1 dead letter(s)" in listing
        position = next(
            line.split()[1] for line in listing.splitlines() if poison.id in line
        ).strip("│ ")

        shown = runner.invoke(app, ["dlq", "show", TOPIC, position], env=env)
        assert shown.exit_code == 0, shown.output
        assert '"row_count": "7"' in shown.output  # int64 is a string in proto JSON
        assert '"attempts": "2"' in shown.output
        assert f'"consumer_group": "{group}"' in shown.output
        assert _applied(sessions, poison.id) == 0

        fixed.set()  # the bug is fixed and deployed; now replay
        replayed = runner.invoke(app, ["dlq", "replay", f"{TOPIC}.dlq", position], env=env)
        assert replayed.exit_code == 0, replayed.output
        assert "replayed 1 dead letter(s)" in replayed.output
        eventually(
            lambda: _applied(sessions, poison.id) == 1, timeout=120, what="the replay to apply"
        )

        # Replaying again is safe: the event id was applied, the copy is skipped.
        marker = Envelope.wrap(EVENT(dataset_version=subject), source="t", subject=subject)
        again = runner.invoke(app, ["dlq", "replay", TOPIC, position], env=env)
        assert again.exit_code == 0, again.output
        publisher.publish(marker)  # same key: applied after the second replay was handled
        eventually(
            lambda: _applied(sessions, marker.id) == 1,
            timeout=120,
            what="the marker behind the replay",
        )
        assert _applied(sessions, poison.id) == 1

        refused = runner.invoke(app, ["dlq", "replay", TOPIC], env=env)
        assert refused.exit_code == 2, "nothing named and no --all: nothing is replayed"
    finally:
        loop.stop()
        publisher.close()
        engine.dispose()
