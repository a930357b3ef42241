"""The rules a training loop follows: the learning-rate schedule, early stopping, and which
checkpoints retention keeps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from services.trainer.domain.config import LearningRateSchedule


def learning_rate_at(
    step: int,
    *,
    peak: float,
    total_steps: int,
    warmup_steps: int,
    schedule: LearningRateSchedule,
) -> float:
    """The learning rate for optimizer step ``step`` (0-based): linear warm-up to ``peak``
    over ``warmup_steps``, then constant, linear or cosine decay to zero at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule is LearningRateSchedule.CONSTANT:
        return peak
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if schedule is LearningRateSchedule.COSINE:
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (1.0 - progress)


@dataclass
class EarlyStopping:
    """Stop after ``patience`` consecutive validations that did not beat the best loss by
    more than ``min_delta``; ``patience == 0`` never stops."""

    patience: int
    min_delta: float = 0.0
    best: float | None = None
    stale: int = 0

    def observe(self, loss: float) -> bool:
        """Record a validation loss; True when it is a new best."""
        if self.best is None or loss < self.best - self.min_delta:
            self.best = loss
            self.stale = 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience


@dataclass(frozen=True)
class KeptCheckpoint:
    """A checkpoint as retention sees it."""

    step: int
    validation_loss: float | None
    is_final: bool = False


def checkpoints_to_delete(kept: Sequence[KeptCheckpoint], keep_best_k: int) -> list[int]:
    """Steps whose artifacts retention deletes: all but the ``keep_best_k`` lowest validation
    losses (checkpoints never validated rank last, ties keep the later step) and the final
    checkpoint. ``keep_best_k == 0`` keeps everything."""
    if keep_best_k <= 0:
        return []
    candidates = [c for c in kept if not c.is_final]
    ranked = sorted(
        candidates,
        key=lambda c: (math.inf if c.validation_loss is None else c.validation_loss, -c.step),
    )
    return sorted(c.step for c in ranked[keep_best_k:])
