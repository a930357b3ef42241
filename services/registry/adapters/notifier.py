"""Wakes WatchAlias streams when an alias move commits.

An idle WatchAlias stream blocks on :class:`AliasMoveNotifier`'s condition and reads the
database only after a wake-up. Moves committed in this process wake the streams at once (the
handlers notify after commit); moves committed by another replica of the registry (sharing one
PostgreSQL database) are noticed by one :class:`AliasMovePoller` per process, which reads the
newest move's sequence number every few hundred milliseconds while any stream is open. So a
hundred idle watchers cost one small query per interval, not a hundred. The mechanism is
:mod:`shared.change_notifier`'s.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.change_notifier import ChangeNotifier, ChangePoller


class AliasMoveNotifier(ChangeNotifier):
    """Wakes WatchAlias streams: notified after every committed alias move."""


class AliasMovePoller(ChangePoller):
    """Notifies when the newest alias move in the database changes (another replica moved).

    ``newest_move`` reads a number that grows with every committed move (the history's
    sequence).
    """

    def __init__(
        self,
        notifier: AliasMoveNotifier,
        newest_move: Callable[[], int],
        interval_seconds: float,
    ) -> None:
        super().__init__(notifier, newest_move, interval_seconds, name="alias-move-poller")
