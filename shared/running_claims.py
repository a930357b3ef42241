"""Claims on queued work that last exactly as long as the process holding them.

Several replicas share one work queue in the database (evaluations, for one): a replica marks a
row RUNNING and works on it for minutes. When a replica dies, its RUNNING rows must run again;
while it lives, nobody else may take them. A lease column would need renewing and a clock
everybody trusts; PostgreSQL already knows which sessions are alive. So a claim is a
session-level advisory lock, taken on a connection of its own before the RUNNING mark commits
and held until the work ends: a replica that finds a RUNNING row whose lock it can take knows
its owner is gone (the server dropped the lock with the dead process' connection).

SQLite has no such locks and one writer at a time, so it runs one replica: every RUNNING row
found at start-up was left by this service's previous run, and ``held_elsewhere`` says no.
"""

from __future__ import annotations

import hashlib
import threading

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine


def advisory_lock_key(namespace: str, name: str) -> int:
    """A signed 64-bit PostgreSQL advisory-lock key for ``name`` in ``namespace``."""
    digest = hashlib.sha256(f"{namespace}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class RunningClaims:
    """Advisory locks naming the rows this process is working on (PostgreSQL), or nothing."""

    def __init__(self, engine: Engine | None, namespace: str) -> None:
        postgresql = engine is not None and engine.dialect.name == "postgresql"
        self._engine = engine if postgresql else None
        self._namespace = namespace
        self._held: dict[str, Connection] = {}
        self._guard = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._engine is not None

    def take(self, name: str) -> bool:
        """Hold ``name`` until :meth:`release` (again: still held once); False when another live
        session holds it."""
        if self._engine is None:
            return True
        with self._guard:
            if name in self._held:
                return True  # already this process' own
        connection = self._engine.connect()
        try:
            taken = bool(
                connection.execute(
                    select(func.pg_try_advisory_lock(advisory_lock_key(self._namespace, name)))
                ).scalar()
            )
            connection.commit()  # the lock is the session's, not the transaction's
        except BaseException:
            connection.close()
            raise
        if not taken:
            connection.close()
            return False
        with self._guard:
            self._held[name] = connection
        return True

    def release(self, name: str) -> None:
        with self._guard:
            connection = self._held.pop(name, None)
        if connection is None:
            return
        try:
            connection.execute(
                select(func.pg_advisory_unlock(advisory_lock_key(self._namespace, name)))
            )
            connection.commit()
        finally:
            connection.close()

    def held_elsewhere(self, name: str) -> bool:
        """True while some live session (this process' own claims included) holds ``name``."""
        if self._engine is None:
            return False
        key = advisory_lock_key(self._namespace, name)
        with self._engine.connect() as connection:
            free = bool(connection.execute(select(func.pg_try_advisory_lock(key))).scalar())
            if free:
                connection.execute(select(func.pg_advisory_unlock(key)))
            connection.commit()
        return not free
