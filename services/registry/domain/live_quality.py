"""Live quality: whether a checkpoint is past the model's floor, from a bare value or from
counts through an always-valid confidence sequence (:func:`judge_live_quality`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.stats.sequential import DEFAULT_PRIOR, bernoulli_confidence_sequence


def higher_is_better(metric: str) -> bool:
    """Every metric is a fraction where higher is better, except losses."""
    return not (metric == "loss" or metric.endswith("_loss"))


def is_past_floor(metric: str, value: float, floor: float | None) -> bool:
    """True when ``value`` is worse than the model's floor (a ceiling, for a loss)."""
    if floor is None:
        return False
    return value < floor if higher_is_better(metric) else value > floor


#: Each bound of a live quality confidence sequence is wrong with probability at most this,
#: over a checkpoint's whole time in production: the false-rollback rate of a checkpoint that
#: is at or above its floor (the default of ``TUNELINE_REGISTRY_LIVE_QUALITY_ALPHA``).
LIVE_QUALITY_ALPHA = 0.01
#: Labelled outcomes a checkpoint needs before counted live quality can find it below its
#: floor: no rollback on the first handful of feedback, however bad (the default of
#: ``TUNELINE_REGISTRY_LIVE_QUALITY_MIN_TRIALS``).
LIVE_QUALITY_MIN_TRIALS = 100
#: Weight, in outcomes, of the confidence sequence's prior, centred on the floor: the sequence
#: is tightest where the decision is made (any prior fixed before the data keeps it valid;
#: the default of ``TUNELINE_REGISTRY_LIVE_QUALITY_PRIOR_WEIGHT``).
LIVE_QUALITY_PRIOR_WEIGHT = 20.0


@dataclass(frozen=True)
class LiveQualityRule:
    """How counted live quality is judged: the error rate of the confidence sequence, the
    outcomes needed before any verdict, and the weight of its prior (a service setting)."""

    alpha: float = LIVE_QUALITY_ALPHA
    min_trials: int = LIVE_QUALITY_MIN_TRIALS
    prior_weight: float = LIVE_QUALITY_PRIOR_WEIGHT

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"live quality alpha must be in (0, 1), not {self.alpha}")
        if self.min_trials < 1:
            raise ValueError(f"live quality min_trials must be >= 1, not {self.min_trials}")
        if not self.prior_weight > 0:
            raise ValueError(f"live quality prior_weight must be > 0, not {self.prior_weight}")


@dataclass(frozen=True)
class LiveQuality:
    """A production checkpoint's counted live quality so far, and what it says."""

    successes: int
    trials: int
    lower_bound: float
    upper_bound: float
    below_floor: bool
    #: Of the bounds: 1 - the rule's alpha.
    confidence_level: float = 1 - LIVE_QUALITY_ALPHA

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else math.nan


def judge_live_quality(
    successes: int, trials: int, floor: float | None, rule: LiveQualityRule | None = None
) -> LiveQuality:
    """Counted live quality of a success rate (higher is better) against the model's floor.

    Below the floor once there are at least ``rule.min_trials`` outcomes and the upper bound
    of the always-valid confidence sequence is below it: a checkpoint whose true rate is at or
    above the floor is rolled back with probability at most ``rule.alpha``, however often
    reports arrive.
    """
    rule = rule or LiveQualityRule()
    prior = DEFAULT_PRIOR
    if floor is not None:
        centre = min(max(floor, 0.01), 0.99)
        prior = (centre * rule.prior_weight, (1 - centre) * rule.prior_weight)
    bounds = bernoulli_confidence_sequence(successes, trials, rule.alpha, prior)
    below = floor is not None and trials >= rule.min_trials and bounds.upper < floor
    return LiveQuality(successes, trials, bounds.lower, bounds.upper, below, 1 - rule.alpha)


@dataclass(frozen=True)
class LiveQualityReport:
    """A live quality report as recorded: the production checkpoint it is about, its value and
    whether that is past the model's floor, and for a counted report the totals so far."""

    model: str
    checkpoint: str
    metric: str
    slice: str
    #: The report's value, or for a counted report the success rate of the totals.
    value: float
    example_count: int
    below_floor: bool
    source: str
    report_time: datetime
    window: timedelta | None
    #: The model's floor for the metric; ``None`` when its gate sets none.
    floor: float | None
    #: The counted totals and their confidence sequence; ``None`` for a bare value.
    counted: LiveQuality | None
