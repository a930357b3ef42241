"""SQLAlchemy engine and sessions for a service's own metadata database.

SQLite (one file per service) by default, PostgreSQL by URL. The plumbing tables
(`shared.events.tables`) are created next to the service's own tables in the same database.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from shared.events.tables import PlumbingBase


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
    for metadata in metadatas:
        metadata.create_all(engine)


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (handlers return them)."""
    return sessionmaker(engine, expire_on_commit=False, future=True)
