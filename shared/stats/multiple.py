"""Family-wise error control: Holm's step-down procedure, with weights.

When one evaluation asks many questions (every gated metric, in every gated slice, on every
evaluation set), testing each at alpha makes *some* false alarm likely: with 34 independent tests
at alpha = 0.05, an unchanged model would be called a regression 83 % of the time. Holm's procedure
keeps the probability of even one false rejection at most alpha, whatever the dependence between
the tests, and rejects everything Bonferroni would and more.

The weighted version (Holm 1979, §4) spends alpha unevenly: a hypothesis of weight ``w`` (weights
sum to 1) is first tested at ``alpha·w``. Giving the primary metric most of the weight keeps almost
all of its power while the slices and guardrails still share the rest. Hypotheses are taken in
the order of ``p / w``; at each step the remaining hypotheses' weights are renormalised, and
the first one not rejected stops the procedure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class HolmResult:
    """Per hypothesis, in the order given: the adjusted p-value and whether it is rejected."""

    adjusted_p_values: tuple[float, ...]
    rejected: tuple[bool, ...]


def weighted_holm(
    p_values: Sequence[float], weights: Sequence[float] | None, alpha: float
) -> HolmResult:
    """Holm's weighted step-down procedure at family-wise level ``alpha``.

    ``weights`` need not sum to 1 (they are normalised); ``None`` weighs every hypothesis
    equally (the plain Holm procedure). A hypothesis is rejected when its adjusted p-value is
    at most ``alpha``.
    """
    count = len(p_values)
    if weights is None:
        weights = [1.0] * count
    if len(weights) != count:
        raise ValueError("one weight per p-value")
    if any(not w > 0 for w in weights):
        raise ValueError("weights must be positive")
    if any(not 0 <= p <= 1 for p in p_values):
        raise ValueError("p-values must be in [0, 1]")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    order = sorted(range(count), key=lambda i: (p_values[i] / weights[i], i))
    remaining = float(sum(weights))
    adjusted = [1.0] * count
    running = 0.0
    for index in order:
        running = max(running, min(1.0, p_values[index] * remaining / weights[index]))
        adjusted[index] = running
        remaining -= weights[index]
    return HolmResult(
        adjusted_p_values=tuple(adjusted), rejected=tuple(p <= alpha for p in adjusted)
    )
