"""Feedback accounting: successes of trials per production checkpoint, reported in batches.

Outcomes accumulate per (model, checkpoint). A flush turns what accumulated into one
:class:`LiveQualityBatch` per checkpoint with a fresh request id and keeps it *in flight* until
the registry settles it: accepted (done), refused for good (dropped — e.g. the checkpoint is no
longer production, so its counts must not move the alert of the one that is), or not reached
(kept, and sent again with the same request id, which the registry dedupes: a retry never counts
twice). New outcomes meanwhile go into the next batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class ReportOutcome(StrEnum):
    """How the registry answered a batch (a metric label)."""

    ACCEPTED = "accepted"
    #: Refused for good (not production any more, invalid): dropped, never retried.
    DROPPED = "dropped"
    #: Not reached (down, deadline): kept and retried with the same request id.
    RETRY = "retry"


@dataclass(frozen=True)
class LiveQualityBatch:
    model: str
    checkpoint: str
    successes: int
    trials: int
    request_id: str
    first_outcome: datetime
    last_outcome: datetime

    @property
    def window_seconds(self) -> float:
        return max(0.0, (self.last_outcome - self.first_outcome).total_seconds())


@dataclass
class _Pending:
    successes: int
    trials: int
    first: datetime
    last: datetime


class FeedbackLedger:
    """Outcomes not yet accepted by the registry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._in_flight: dict[str, LiveQualityBatch] = {}

    def record(self, model: str, checkpoint: str, success: bool, at: datetime) -> int:
        """Count one outcome; returns the trials now waiting for the next flush."""
        with self._lock:
            pending = self._pending.get((model, checkpoint))
            if pending is None:
                pending = self._pending[(model, checkpoint)] = _Pending(0, 0, at, at)
            pending.successes += int(success)
            pending.trials += 1
            pending.last = max(pending.last, at)
            return sum(p.trials for p in self._pending.values())

    def pending_trials(self) -> int:
        with self._lock:
            return sum(p.trials for p in self._pending.values())

    def take_batches(self, new_request_id: Callable[[], str]) -> list[LiveQualityBatch]:
        """Batches to send now: those still in flight (same request id), then the new ones."""
        with self._lock:
            for (model, checkpoint), pending in self._pending.items():
                batch = LiveQualityBatch(
                    model=model,
                    checkpoint=checkpoint,
                    successes=pending.successes,
                    trials=pending.trials,
                    request_id=new_request_id(),
                    first_outcome=pending.first,
                    last_outcome=pending.last,
                )
                self._in_flight[batch.request_id] = batch
            self._pending.clear()
            return list(self._in_flight.values())

    def settle(self, batch: LiveQualityBatch, outcome: ReportOutcome) -> None:
        with self._lock:
            if outcome is not ReportOutcome.RETRY:
                self._in_flight.pop(batch.request_id, None)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)
