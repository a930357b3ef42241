"""An always-valid confidence sequence for a success rate that is reported in batches.

Live quality arrives as counts (``successes`` of ``trials``, e.g. feedback marked correct) in
reports that come whenever the serving side sends them, and each report may trigger a
rollback. A fixed-sample interval looked at after every report would eventually exclude the
truth by chance alone; a *confidence sequence* holds at every report at once:
``P(∃ t: p ∉ CS_t) ≤ alpha``.

This one is the conjugate mixture (Robbins 1970; Howard et al. 2021, *Ann. Statist.* 49,
1055-1080, §3): for every candidate value ``m``, the Beta(a, b)-mixture of Bernoulli likelihood
ratios against ``m``,

    M_t(m) = B(a + S, b + F) / B(a, b) / (m^S (1 - m)^F),

is a nonnegative martingale with mean 1 when the true rate is ``m`` (S successes and F failures
so far), so by Ville's inequality it exceeds ``1/alpha`` with probability at most alpha, ever. The
sequence is ``{m : M_t(m) < 1/alpha}``, an interval around S / (S + F) (``log M_t`` is convex in
``m`` and at most 0 at the observed rate). It depends on the counts only, so batching and the
order of outcomes within a batch do not matter, and checking after every report is free.

Any prior fixed before the data keeps the sequence valid; it decides where the sequence is
tightest. A prior centred on the value a decision is made at (the floor) and worth a few dozen
outcomes tightens it there by about a quarter at a few hundred outcomes, compared with the
uniform prior.

For a rollback rule "the upper bound is below the floor": if the true rate is at or above the
floor, that happens with probability at most alpha over the checkpoint's whole life in production.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

#: The uniform prior: no preference for any success rate.
DEFAULT_PRIOR = (1.0, 1.0)
_BISECTION_STEPS = 60


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


@dataclass(frozen=True)
class ConfidenceBounds:
    """Where the success rate lies, simultaneously over every report, with prob. ``1 - alpha``."""

    lower: float
    upper: float
    alpha: float


def bernoulli_confidence_sequence(
    successes: int,
    trials: int,
    alpha: float,
    prior: tuple[float, float] = DEFAULT_PRIOR,
) -> ConfidenceBounds:
    """The confidence sequence after ``successes`` of ``trials`` (see the module doc)."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    a, b = prior
    if not (a > 0 and b > 0):
        raise ValueError("the prior's parameters must be positive")
    if trials == 0:
        return ConfidenceBounds(0.0, 1.0, alpha)
    failures = trials - successes
    threshold = math.log(1 / alpha)
    mixture = _log_beta(a + successes, b + failures) - _log_beta(a, b)

    def log_wealth(m: float) -> float:
        return mixture - successes * math.log(m) - failures * math.log1p(-m)

    rate = successes / trials
    lower = 0.0 if successes == 0 else _boundary(log_wealth, threshold, inside=rate, outside=0.0)
    upper = 1.0 if failures == 0 else _boundary(log_wealth, threshold, inside=rate, outside=1.0)
    return ConfidenceBounds(lower, upper, alpha)


def _boundary(
    log_wealth: Callable[[float], float], threshold: float, *, inside: float, outside: float
) -> float:
    """Bisection between a point in the sequence and an end of [0, 1] that is not; the
    outer end of the last bracket, so the bound errs on the wide side."""
    for _ in range(_BISECTION_STEPS):
        middle = (inside + outside) / 2
        if middle in (0.0, 1.0):
            break
        if log_wealth(middle) < threshold:
            inside = middle
        else:
            outside = middle
    return outside
