"""Rollback: which checkpoint production goes back to (:func:`choose_rollback_target`),
replaying the alias history as a stack of production "stints", and the circuit breaker that
limits automatic rollbacks (:class:`RollbackBreaker`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.registry.domain.model import MoveTrigger
from shared.errors import (
    FailedPrecondition,
    PreconditionViolation,
)


@dataclass(frozen=True)
class RollbackBreaker:
    """The per-model circuit breaker of automatic rollbacks (a service setting).

    At most ``limit`` rollbacks by alert or regression within ``window``; the next automatic one
    is refused and freezes the model's automation until a person unfreezes it. Something that
    keeps rolling production back is more likely broken itself (a flapping alert, a bad floor)
    than right every time, and each step walks production further into the past.
    """

    limit: int = 1
    window: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"the rollback breaker's limit must be >= 1, not {self.limit}")
        if self.window <= timedelta(0):
            raise ValueError(f"the rollback breaker's window must be positive, not {self.window}")

    def window_start(self, now: datetime) -> datetime:
        return now - self.window

    def trips(self, automatic_rollbacks_in_window: int) -> bool:
        """Whether one more automatic rollback would exceed the limit."""
        return automatic_rollbacks_in_window >= self.limit

    def reason(self, automatic_rollbacks_in_window: int) -> str:
        return (
            f"{automatic_rollbacks_in_window} automatic rollback(s) within "
            f"{self.window.total_seconds():.0f} s (limit {self.limit}): automation frozen "
            "until a person unfreezes it"
        )


@dataclass(frozen=True)
class ProductionMove:
    """One move of a model's ``production`` alias, oldest first in a history."""

    revision: int
    from_checkpoint: str
    to_checkpoint: str
    trigger: MoveTrigger


def production_stack(moves: Iterable[ProductionMove]) -> list[str]:
    """Replay production's history as a stack of stints; the top is production now.

    A promotion pushes its checkpoint. A rollback pops the checkpoint it leaves, then unwinds
    to the restored checkpoint's latest stint (or pushes it, when an explicit target was not on
    the stack). So after A → B → C, rolling back twice gives B then A, and a rollback never
    "returns" to a checkpoint that was itself rolled away from.
    """
    stack: list[str] = []
    for move in sorted(moves, key=lambda m: m.revision):
        if move.trigger.is_rollback:
            if stack:
                stack.pop()
            if move.to_checkpoint in stack:
                last = len(stack) - 1 - stack[::-1].index(move.to_checkpoint)
                del stack[last + 1 :]
            else:
                stack.append(move.to_checkpoint)
        else:
            stack.append(move.to_checkpoint)
    return stack


NO_ROLLBACK_TARGET = "NO_ROLLBACK_TARGET"
INVALID_ROLLBACK_TARGET = "INVALID_ROLLBACK_TARGET"


def choose_rollback_target(
    moves: Sequence[ProductionMove],
    *,
    model: str,
    rolled_back: Iterable[str],
    ever_production: Iterable[str] = (),
    explicit_target: str = "",
) -> str:
    """The checkpoint production rolls back to, or FAILED_PRECONDITION (nothing changes).

    Default: the newest earlier stint below the current one whose checkpoint is neither the
    current checkpoint nor one that was rolled back for a regression or an alert. An explicit
    target must have been production before, must not be the current checkpoint and must not
    have been rolled back itself.
    """
    stack = production_stack(moves)
    if not stack:
        raise FailedPrecondition(
            f"{model} has nothing in production to roll back",
            [PreconditionViolation(NO_ROLLBACK_TARGET, model, "production was never set")],
        )
    current = stack[-1]
    bad = set(rolled_back)
    if explicit_target:
        problem = ""
        if explicit_target == current:
            problem = "it is production now"
        elif explicit_target not in set(ever_production):
            problem = "it was never production"
        elif explicit_target in bad:
            problem = "it was rolled back for a regression or an alert"
        if problem:
            raise FailedPrecondition(
                f"cannot roll {model} back to {explicit_target}: {problem}",
                [PreconditionViolation(INVALID_ROLLBACK_TARGET, explicit_target, problem)],
            )
        return explicit_target
    for checkpoint in reversed(stack[:-1]):
        if checkpoint != current and checkpoint not in bad:
            return checkpoint
    raise FailedPrecondition(
        f"{model} has no earlier good checkpoint to roll back to from {current}",
        [
            PreconditionViolation(
                NO_ROLLBACK_TARGET,
                model,
                f"no checkpoint was production before {current} without being rolled back itself",
            )
        ],
    )


@dataclass(frozen=True)
class Regression:
    """A regression the evaluator found in a checkpoint (RegressionDetected): production rolls
    back when it is the checkpoint in production."""

    model: str
    #: The evaluation that found it: one regression per evaluation is acted on.
    evaluation: str
    #: The trainer's name of the regressed checkpoint, and its artifact's sha256 ("" unknown).
    checkpoint: str
    checkpoint_sha256: str
    metric: str
    slice: str
    delta: float
    baseline: float
    candidate: float
    p_value: float
    #: When it was found; ``None`` when the event does not say.
    event_time: datetime | None = None
