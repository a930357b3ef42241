"""How a worker's training loop is told to stop (:class:`StopSignals`, set by its control
thread) and how it fails with a reason (:class:`TrainingFailure`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.trainer.domain.jobs import FailureReason


class TrainingFailure(Exception):
    """A failure the worker reports with its reason (anything else is INTERNAL)."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class StopSignals:
    """Set by the worker's control thread, read by the training loop between micro-batches.

    ``cancel``: stop, write a final checkpoint, report cancelled. ``halt``: the service is
    shutting down: stop at the next step boundary and write a checkpoint of the steps since the
    last one (the supervisor records it; the job resumes there). ``abandoned``: the service is
    gone (its pipe ended): stop at once and write nothing, since nobody would record it.
    ``budget_exhausted``: the job's cost reached its per-run budget; finish the step, validate,
    write the final checkpoint and report BUDGET_EXHAUSTED, like a time limit.
    """

    cancel: bool = False
    halt: bool = False
    abandoned: bool = False
    budget_exhausted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
