"""Wakes WatchAlias streams when an alias move commits in this process.

Streams also re-read the database every few hundred milliseconds, so moves committed by
another replica of the registry (sharing one PostgreSQL database) reach them too; the
notifier only makes local moves arrive at once.
"""

from __future__ import annotations

import threading


class AliasMoveNotifier:
    """A generation counter with a condition variable; closing it ends every wait."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0
        self._closed = False

    @property
    def generation(self) -> int:
        with self._condition:
            return self._generation

    @property
    def closed(self) -> bool:
        return self._closed

    def notify(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait(self, seen_generation: int, timeout: float) -> int:
        """Block until a move newer than ``seen_generation``, close, or ``timeout``."""
        with self._condition:
            self._condition.wait_for(
                lambda: self._closed or self._generation != seen_generation, timeout
            )
            return self._generation

    def close(self) -> None:
        """End every stream's wait: the service is stopping."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
