"""SQLAlchemy engine and sessions for a service's own metadata database.

SQLite (one file per service) by default, PostgreSQL by URL. The plumbing tables
(`shared.events.tables`) are created next to the service's own tables in the same database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import MetaData, create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from shared.events.tables import PlumbingBase

log = logging.getLogger(__name__)
T = TypeVar("T")


def create_database_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url``; for SQLite, the file's folder is created and WAL turned on.

    WAL lets the gRPC threads read while the consumer or relay writes; ``busy_timeout`` makes
    a writer wait for the lock instead of failing at once.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    return engine


def create_schema(engine: Engine, metadatas: Iterable[MetaData] = ()) -> None:
    """Create the plumbing tables and the service's own tables when missing."""
    PlumbingBase.metadata.create_all(engine)
    add_missing_plumbing_columns(engine)
    for metadata in metadatas:
        metadata.create_all(engine)


def add_missing_plumbing_columns(engine: Engine) -> list[str]:
    """Add plumbing columns a database created by an older version lacks; returns them.

    There are no migrations yet: tables are created at start. ``create_all`` never alters an
    existing table, so columns added to the plumbing tables since (the outbox's delivery
    bookkeeping) are added here. Only nullable or server-defaulted columns are ever added, so
    the ``ALTER TABLE`` is safe on a populated table on SQLite and PostgreSQL alike.
    """
    inspector = inspect(engine)
    added: list[str] = []
    with engine.begin() as connection:
        for table in PlumbingBase.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                if not column.nullable and column.server_default is None:
                    raise RuntimeError(f"cannot add required column {table.name}.{column.name}")
                kind = column.type.compile(dialect=engine.dialect)
                default = ""
                if column.server_default is not None:
                    default = f" DEFAULT {column.server_default.arg}"  # type: ignore[attr-defined]
                quote = engine.dialect.identifier_preparer.quote
                connection.exec_driver_sql(
                    f"ALTER TABLE {quote(table.name)} "
                    f"ADD COLUMN {quote(column.name)} {kind}{default}"
                )
                added.append(f"{table.name}.{column.name}")
    return added


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (handlers return them)."""
    return sessionmaker(engine, expire_on_commit=False, future=True)


#: How often a transaction that lost a compare-and-set is run again before giving up.
CONFLICT_ATTEMPTS = 5


def run_in_transaction(sessions: sessionmaker[Session], work: Callable[[Session], T]) -> T:
    """``work(session)`` in one transaction, run again on fresh state when it lost a
    compare-and-set: a row versioned with ``version_id_col`` that another transaction changed
    after ``work`` read it (StaleDataError; the transaction was rolled back, nothing of it
    stays). ``work`` decides again from what it reads, so neither change is lost."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            with sessions() as session, session.begin():
                return work(session)
        except StaleDataError:
            if attempt == CONFLICT_ATTEMPTS:
                raise
            log.info("a concurrent change won; running the transaction again")
    raise AssertionError("unreachable")


@contextmanager
def read_snapshot(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session that reads one consistent snapshot of the database; nothing written in it stays.

    A plain transaction does not give that to a read of several statements. On SQLite the
    driver starts a transaction only before the first write, so every SELECT before it sees
    whatever was committed when it ran; on PostgreSQL, READ COMMITTED takes a snapshot per
    statement. A read of a checkpoint and then of its evaluations could so return an evaluation
    whose verdict the checkpoint row, read a moment earlier, did not carry yet. Here SQLite gets
    an explicit deferred ``BEGIN`` (its snapshot is taken at the first read and kept to the end;
    WAL readers never block writers) and PostgreSQL a REPEATABLE READ, READ ONLY transaction.
    Closing the session rolls the transaction back (a read has nothing to commit) and leaves
    what was loaded usable, as after a commit with ``expire_on_commit=False``.
    """
    with sessions() as session:
        connection = session.connection()
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield session
