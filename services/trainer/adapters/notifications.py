"""In-process change notifications: jobs changed → wake watchers and the supervisor.

The supervisor and the RPC handlers commit to the database; they then call
:meth:`JobChanges.notify` so that ``WatchTrainingJob`` streams send the new snapshot at once and
the supervisor looks at its queue without waiting for its next poll. An idle stream blocks on
the notifier and reads the database only when woken (:mod:`shared.change_notifier`); changes
another replica commits are noticed by one :class:`JobChangePoller` per process, which reads one
small aggregate per interval while any stream is open, not one query per stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from shared.change_notifier import ChangeNotifier, ChangePoller


class JobChanges(ChangeNotifier):
    """Wakes WatchTrainingJob streams, and the supervisor, after a job change commits."""

    def __init__(self) -> None:
        super().__init__()
        self.supervisor_wake = threading.Event()

    def notify(self) -> None:
        """Something changed (a job was created, cancelled, progressed)."""
        super().notify()
        self.supervisor_wake.set()


class JobChangePoller(ChangePoller):
    """Notifies when the jobs table changed in the database (another replica wrote it).

    ``newest_change`` reads a value that differs after any job is created or updated (the
    number of jobs and the newest ``update_time``).
    """

    def __init__(
        self, changes: JobChanges, newest_change: Callable[[], object], interval_seconds: float
    ) -> None:
        super().__init__(changes, newest_change, interval_seconds, name="job-change-poller")
