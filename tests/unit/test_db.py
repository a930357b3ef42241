"""The service database: SQLite file engine with WAL, PostgreSQL, and the plumbing schema."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy import Integer, String, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import (
    create_database_engine,
    create_schema,
    create_session_factory,
    read_snapshot,
)
from shared.events import OutboxEvent


class _ServiceBase(DeclarativeBase):
    pass


class _Thing(_ServiceBase):
    __tablename__ = "things"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def _pragma(engine: Engine, name: str) -> object:
    with engine.connect() as connection:
        return connection.execute(text(f"PRAGMA {name}")).scalar()


def test_sqlite_file_engine_creates_parent_folder_and_turns_on_wal(tmp_path: Path) -> None:
    db_file = tmp_path / "deep" / "er" / "svc.db"
    engine = create_database_engine(f"sqlite:///{db_file}")
    try:
        assert db_file.parent.is_dir()
        assert _pragma(engine, "journal_mode") == "wal"
        assert _pragma(engine, "foreign_keys") == 1
        assert _pragma(engine, "busy_timeout") == 30000
        assert _pragma(engine, "synchronous") == 1  # NORMAL
        assert db_file.exists()
    finally:
        engine.dispose()


def test_every_new_connection_gets_the_pragmas(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    try:
        with engine.connect() as first, engine.connect() as second:
            for connection in (first, second):
                assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
                assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        engine.dispose()


def test_in_memory_sqlite_works(tmp_path: Path) -> None:
    engine = create_database_engine("sqlite:///:memory:")
    try:
        assert _pragma(engine, "foreign_keys") == 1
    finally:
        engine.dispose()
    assert list(tmp_path.iterdir()) == []


def test_create_schema_creates_plumbing_and_service_tables(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        create_schema(engine, [_ServiceBase.metadata])
        create_schema(engine, [_ServiceBase.metadata])  # idempotent

        inspector = inspect(engine)
        tables = set(inspector.get_table_names())
        assert {"outbox_events", "processed_events", "dead_lettered_records", "things"} <= tables
        outbox_columns = {c["name"] for c in inspector.get_columns("outbox_events")}
        assert outbox_columns == {
            "seq",
            "event_id",
            "topic",
            "subject",
            "source",
            "time",
            "traceparent",
            "payload",
            "published_at",
            # the relay's delivery bookkeeping: backoff, parking, the lease of a replica
            "attempts",
            "last_error",
            "next_attempt_at",
            "parked_at",
            "claimed_by",
            "claimed_until",
        }
        processed_pk = inspector.get_pk_constraint("processed_events")["constrained_columns"]
        assert set(processed_pk) == {"consumer_group", "event_id"}
    finally:
        engine.dispose()


def test_session_factory_keeps_objects_usable_after_commit(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        create_schema(engine, [_ServiceBase.metadata])
        sessions = create_session_factory(engine)
        with sessions() as session:
            thing = _Thing(id=1, name="one")
            session.add(thing)
            session.commit()
        assert thing.name == "one"  # not expired, no DetachedInstanceError
        with sessions() as session:
            assert session.get(_Thing, 1).name == "one"  # type: ignore[union-attr]
            assert session.query(OutboxEvent).count() == 0
    finally:
        engine.dispose()


def test_a_read_in_snapshot_does_not_see_a_commit_made_while_it_reads(database_url: str) -> None:
    """Two statements of one read see the same database, whatever commits between them: the
    registry's GetCheckpoint once returned an evaluation with the verdict of before it."""
    engine = create_database_engine(database_url)
    try:
        create_schema(engine, [_ServiceBase.metadata])
        sessions = create_session_factory(engine)
        with sessions() as session, session.begin():
            session.add(_Thing(id=1, name="before"))

        with read_snapshot(sessions) as session:
            first = session.execute(text("SELECT name FROM things WHERE id = 1")).scalar_one()
            with sessions() as writer, writer.begin():  # another connection commits meanwhile
                writer.get_one(_Thing, 1).name = "after"
                writer.add(_Thing(id=2, name="new"))
            second = session.execute(text("SELECT name FROM things WHERE id = 1")).scalar_one()
            count = session.execute(text("SELECT count(*) FROM things")).scalar_one()
            assert count == 1, "a row committed after the snapshot was seen"
            loaded = session.get_one(_Thing, 1)
        assert (first, second) == ("before", "before")
        assert loaded.name == "before"  # usable after the read, not expired
        with sessions() as session:  # the commit itself was kept
            assert session.get_one(_Thing, 1).name == "after"
    finally:
        engine.dispose()


def test_create_schema_alone_creates_the_plumbing_tables(database_url: str) -> None:
    """A service that imports only ``shared.db`` must still get the outbox tables.

    Run in a fresh interpreter: in this process other imports have registered them already.
    """
    script = textwrap.dedent(
        f"""
        from sqlalchemy import inspect
        from shared.db import create_database_engine, create_schema
        engine = create_database_engine({database_url!r})
        create_schema(engine)
        print(sorted(inspect(engine).get_table_names()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    tables = result.stdout.strip()
    assert "outbox_events" in tables
    assert "processed_events" in tables


def test_create_schema_adds_newer_plumbing_columns_to_an_older_postgresql_outbox(
    postgresql_url: str,
) -> None:
    """The ``ALTER TABLE … ADD COLUMN`` that upgrades an older outbox in place is valid
    PostgreSQL too (types and server defaults rendered for its dialect)."""
    engine = create_database_engine(postgresql_url)
    try:
        with engine.begin() as connection:  # the outbox as the first release created it
            connection.exec_driver_sql(
                "CREATE TABLE outbox_events (seq SERIAL PRIMARY KEY, event_id VARCHAR(64) UNIQUE,"
                " topic VARCHAR(255), subject VARCHAR(512), source VARCHAR(255),"
                " time TIMESTAMP WITH TIME ZONE, traceparent VARCHAR(64), payload BYTEA,"
                " published_at TIMESTAMP WITH TIME ZONE)"
            )
            connection.exec_driver_sql(
                "INSERT INTO outbox_events (event_id, topic, subject, source, time, traceparent,"
                " payload) VALUES ('e1', 't', 's/1', 'x', now(), '', '')"
            )
        create_schema(engine)
        columns = {c["name"] for c in inspect(engine).get_columns("outbox_events")}
        assert {"attempts", "claimed_by", "claimed_until", "parked_at"} <= columns
        with create_session_factory(engine)() as session:
            [event] = session.query(OutboxEvent).all()
            assert event.event_id == "e1"
            assert event.attempts == 0
    finally:
        engine.dispose()
