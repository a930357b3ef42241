"""``tuneline outbox list|requeue`` on a real SQLite database with a row the relay parked.

The row is parked by the relay itself (the publisher refuses it as too large), re-queued by the
command, and then sent by the relay's next pass; a publisher double stands in for Kafka.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from kafka.errors import MessageSizeTooLargeError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from shared.db import create_database_engine, create_schema, create_session_factory
from shared.events import OutboxEvent, OutboxRelay, stage_event
from shared.events.envelope import Envelope
from tuneline.cli.main import app
from tuneline.cli.outbox import service_database_url


class _Sent:
    def __init__(self, error: BaseException | None) -> None:
        self._error = error

    def get(self, timeout: float | None = None) -> object:
        if self._error is not None:
            raise self._error
        return object()


class _Publisher:
    """Refuses events about ``refused`` subjects as too large, sends the rest."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.sent: list[Envelope] = []

    def send(self, envelope: Envelope) -> _Sent:
        if envelope.subject in self.refused:
            return _Sent(MessageSizeTooLargeError("over message.max.bytes"))
        self.sent.append(envelope)
        return _Sent(None)


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def sessions(database: str) -> Iterator[sessionmaker[Session]]:
    engine = create_database_engine(database)
    create_schema(engine)
    yield create_session_factory(engine)
    engine.dispose()


def _stage(sessions: sessionmaker[Session], subject: str) -> str:
    with sessions() as session, session.begin():
        envelope = stage_event(
            session, timestamp_pb2.Timestamp(seconds=1), source="tuneline/test", subject=subject
        )
    return envelope.id


def _row(sessions: sessionmaker[Session], event_id: str) -> OutboxEvent:
    with sessions() as session:
        return session.scalars(select(OutboxEvent).where(OutboxEvent.event_id == event_id)).one()


@pytest.fixture
def parked(sessions: sessionmaker[Session]) -> tuple[OutboxRelay, _Publisher, OutboxEvent]:
    """A relay, its publisher, and a row it parked (a later row about another subject flowed)."""
    publisher = _Publisher()
    publisher.refused.add("models/big")
    relay = OutboxRelay(sessions, publisher)  # type: ignore[arg-type]
    big = _stage(sessions, "models/big")
    _stage(sessions, "models/small")
    assert relay.publish_pending() == 1
    row = _row(sessions, big)
    assert row.parked_at is not None
    assert row.published_at is None
    return relay, publisher, row


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["outbox", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_list_shows_the_parked_row_with_its_error(parked, database):
    _, _, row = parked
    code, output = _run("list", "--service", "registry", "--database-url", database)
    assert code == 0, output
    assert "MessageSizeTooLargeError" in output
    assert "1 parked outbox event(s) in registry" in output
    assert f"│ {row.seq} " in output


def test_requeue_by_id_puts_the_row_back_and_the_relay_sends_it(parked, sessions, database):
    relay, publisher, row = parked
    assert relay.publish_pending() == 0  # parked: never retried by itself
    publisher.refused.clear()  # the cause is fixed (e.g. a larger message.max.bytes)
    code, output = _run(
        "requeue", "--service", "registry", "--database-url", database, "--id", str(row.seq)
    )
    assert code == 0, output
    assert f"re-queued 1 outbox event(s) in registry: {row.seq}" in output
    requeued = _row(sessions, row.event_id)
    assert (requeued.parked_at, requeued.attempts) == (None, 0)
    assert relay.publish_pending() == 1
    assert publisher.sent[-1].id == row.event_id  # the same ce_id: consumers dedupe a repeat
    code, output = _run("list", "--service", "registry", "--database-url", database)
    assert "0 parked outbox event(s)" in output


def test_an_id_that_is_not_parked_requeues_nothing(parked, sessions, database):
    _, _, row = parked
    code, output = _run(
        "requeue",
        "--service",
        "registry",
        "--database-url",
        database,
        "--id",
        str(row.seq),
        "--id",
        "999",
    )
    assert code == 1
    assert "999" in output
    assert _row(sessions, row.event_id).parked_at is not None


def test_requeue_all_reads_the_services_own_database_setting(
    parked, sessions, database, monkeypatch
):
    _, _, row = parked
    monkeypatch.setenv("TUNELINE_REGISTRY_DATABASE_URL", database)
    assert service_database_url("registry") == database
    code, output = _run("requeue", "--service", "registry", "--all")
    assert code == 0, output
    assert _row(sessions, row.event_id).parked_at is None


@pytest.mark.parametrize(
    "args",
    [
        ("requeue", "--service", "registry"),  # neither --id nor --all
        ("requeue", "--service", "registry", "--all", "--id", "1"),
        ("list", "--service", "nope"),
    ],
)
def test_bad_arguments_are_usage_errors(args):
    code, _ = _run(*args)
    assert code == 2


def test_without_settings_the_database_is_under_the_stack_home(monkeypatch, tmp_path):
    for variable in ("TUNELINE_DATA_DIR", "TUNELINE_TRAINER_DATABASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    expected = (tmp_path / "home" / "data" / "trainer" / "trainer.db").resolve()
    assert service_database_url("trainer") == f"sqlite:///{expected}"
