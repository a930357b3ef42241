"""Wakes long-lived watch streams when what they watch changes, instead of each polling.

An idle stream blocks on :class:`ChangeNotifier`'s condition and reads the database only after
a wake-up. Changes committed in this process wake the streams at once (whoever commits calls
``notify``); changes committed by another replica sharing the database are noticed by one
:class:`ChangePoller` per process, which reads one small value every interval while any stream
is open. So a hundred idle watchers cost one query per interval, not a hundred. Used by the
registry's WatchAlias and the trainer's WatchTrainingJob.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class ChangeNotifier:
    """A generation counter with a condition variable; closing it ends every wait."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0
        self._closed = False
        self._watchers = 0

    @property
    def generation(self) -> int:
        with self._condition:
            return self._generation

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def watchers(self) -> int:
        """Streams waiting for changes now (the poller only reads the database while any are)."""
        with self._condition:
            return self._watchers

    @contextmanager
    def watching(self) -> Iterator[None]:
        with self._condition:
            self._watchers += 1
        try:
            yield
        finally:
            with self._condition:
                self._watchers -= 1

    def notify(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def interrupt(self) -> None:
        """Make every wait re-check its ``ended`` event (a stream's client went away)."""
        with self._condition:
            self._condition.notify_all()

    def wait(self, seen_generation: int, ended: threading.Event, timeout: float) -> int:
        """Block until a change newer than ``seen_generation``, ``ended``, close, or ``timeout``.

        The timeout is only a safety net (the service stopping); returning the same generation
        means nothing changed and the caller need not read the database.
        """
        with self._condition:
            self._condition.wait_for(
                lambda: self._closed or ended.is_set() or self._generation != seen_generation,
                timeout,
            )
            return self._generation

    def close(self) -> None:
        """End every stream's wait: the service is stopping."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class ChangePoller:
    """Notifies when the newest change in the database differs (another replica changed it).

    ``newest_change`` reads a value that differs after every committed change (a history's
    sequence, the newest update time); it is called every ``interval_seconds`` while streams
    are watching, and never while none is.
    """

    def __init__(
        self,
        notifier: ChangeNotifier,
        newest_change: Callable[[], object],
        interval_seconds: float,
        *,
        name: str = "change-poller",
    ) -> None:
        self._notifier = notifier
        self._newest_change = newest_change
        self._name = name
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        seen: object = None
        while not self._stop.wait(self._interval):
            if not self._notifier.watchers:
                seen = None  # nobody to wake; re-read from scratch when someone watches
                continue
            try:
                newest = self._newest_change()
            except Exception:  # a database blip must not end the poller
                log.warning("could not read the newest change", exc_info=True)
                continue
            # the first read after watching began has no baseline: a stream may have started
            # just before a remote change, so wake it once to re-read
            if newest != seen:
                self._notifier.notify()
            seen = newest
