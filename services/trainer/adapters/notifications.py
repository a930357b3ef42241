"""In-process change notifications: jobs changed → wake watchers and the supervisor.

The supervisor and the RPC handlers commit to the database; they then call
:meth:`JobChanges.notify` so that ``WatchTrainingJob`` streams send the new snapshot at once and
the supervisor looks at its queue without waiting for its next poll. The database stays the
truth: a waiter always re-reads it, and waits are bounded, so a missed notification only
delays, never loses, an update.
"""

from __future__ import annotations

import threading


class JobChanges:
    """A change counter with a condition variable."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._version = 0
        self.supervisor_wake = threading.Event()

    @property
    def version(self) -> int:
        with self._condition:
            return self._version

    def notify(self) -> None:
        """Something changed (a job was created, cancelled, progressed)."""
        with self._condition:
            self._version += 1
            self._condition.notify_all()
        self.supervisor_wake.set()

    def wait(self, seen: int, timeout: float) -> int:
        """Wait until the version moves past ``seen`` (or ``timeout``); returns the version."""
        with self._condition:
            self._condition.wait_for(lambda: self._version != seen, timeout)
            return self._version
