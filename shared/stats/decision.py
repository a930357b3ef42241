"""The decision rule for one family of gated differences (one evaluation, or one promotion).

For each gated difference δ = candidate - baseline with tolerance τ (a drop of up to τ is
accepted; for a metric where lower is better, a rise of up to τ), the *boundary* is ``-τ``
(``+τ``). Two one-sided tests at that boundary decide:

* **REGRESSED** — "δ lies beyond the boundary" is shown: the one-sided regression p-value,
  adjusted by Holm's weighted procedure over the whole family, is at most alpha. This bounds the
  chance that an evaluation calls *any* of its comparisons a regression when none is by more
  than its tolerance, at alpha, however many slices, metrics and sets it gates.
* **WITHIN_TOLERANCE** — non-inferiority is shown: the interval at confidence ``1 - 2alpha`` lies
  entirely on the good side of the boundary (one-sided p ≤ alpha). No multiplicity adjustment is
  needed for claiming that *all* of several comparisons are within tolerance: that claim is
  wrong only if one of them is, and each is tested at alpha (an intersection-union test).
* **INCONCLUSIVE** otherwise: the data cannot tell. A true drop exactly at the tolerance ends
  here most of the time (it is called either way with probability at most alpha).

Every judgement carries the interval, both p-values, the Holm-adjusted one, the minimum
detectable drop (the smallest true drop that the regression test catches with 80 % power at
this sample size and this comparison's share of alpha) and a sentence saying why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from shared.stats.multiple import weighted_holm
from shared.stats.paired import PairedDifference, normal_quantile

#: Power at which the minimum detectable drop is stated.
DEFAULT_POWER = 0.8
#: Fixed-point steps for the minimum detectable drop (it converges in a handful).
_MDE_STEPS = 30


class DifferenceOutcome(StrEnum):
    REGRESSED = "REGRESSED"
    WITHIN_TOLERANCE = "WITHIN_TOLERANCE"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True)
class GatedDifference:
    """One question of a family: is ``difference`` within ``tolerance`` of no change?"""

    difference: PairedDifference
    tolerance: float
    higher_is_better: bool
    #: This question's share of the family's alpha (weights are normalised over the family).
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError("the tolerance must be a finite number >= 0")
        if not self.weight > 0:
            raise ValueError("the weight must be positive")

    @property
    def boundary(self) -> float:
        """The value of δ beyond which the candidate is worse than tolerated."""
        return -self.tolerance if self.higher_is_better else self.tolerance

    def regression_p_value(self) -> float:
        """One-sided p-value of "δ lies beyond the boundary" (worse than tolerated)."""
        if self.higher_is_better:
            return self.difference.p_value_below(self.boundary)
        return self.difference.p_value_above(self.boundary)

    def non_inferiority_p_value(self) -> float:
        """One-sided p-value of "δ lies on the good side of the boundary"."""
        if self.higher_is_better:
            return self.difference.p_value_above(self.boundary)
        return self.difference.p_value_below(self.boundary)

    def minimum_detectable_drop(self, alpha: float, power: float = DEFAULT_POWER) -> float:
        """The smallest true drop (a rise, for lower-is-better) that the regression test at
        level ``alpha`` flags with probability ``power``, in the metric's units."""
        spread = normal_quantile(1 - alpha) + normal_quantile(power)
        sign = -1.0 if self.higher_is_better else 1.0
        drop = self.tolerance + spread * self.difference.standard_error_at(sign * self.tolerance)
        for _ in range(_MDE_STEPS):
            drop = self.tolerance + spread * self.difference.standard_error_at(sign * drop)
        return drop


@dataclass(frozen=True)
class Judgement:
    """How one gated difference came out, and everything it came out on."""

    outcome: DifferenceOutcome
    estimate: float
    interval_lower: float
    interval_upper: float
    #: ``1 - 2alpha``: each side of the interval is a one-sided test at alpha.
    confidence_level: float
    standard_error: float
    #: Two-sided p-value of "no difference at all".
    p_value: float
    regression_p_value: float
    #: The regression p-value adjusted by Holm's weighted procedure over the family.
    adjusted_p_value: float
    non_inferiority_p_value: float
    minimum_detectable_drop: float
    #: This difference's normalised share of the family's alpha.
    weight: float
    reason: str


def judge_differences(
    family: Sequence[GatedDifference], alpha: float, *, power: float = DEFAULT_POWER
) -> list[Judgement]:
    """Judge every difference of one family (see the module doc), in the order given."""
    if not 0 < alpha < 0.5:
        raise ValueError("alpha must be in (0, 0.5)")
    if not family:
        return []
    total = sum(member.weight for member in family)
    regression_p = [member.regression_p_value() for member in family]
    holm = weighted_holm(regression_p, [member.weight for member in family], alpha)
    confidence = 1 - 2 * alpha
    judgements = []
    for member, p_regression, adjusted, rejected in zip(
        family, regression_p, holm.adjusted_p_values, holm.rejected, strict=True
    ):
        share = member.weight / total
        lower, upper = member.difference.interval(confidence)
        p_non_inferior = member.non_inferiority_p_value()
        mde = member.minimum_detectable_drop(alpha * share, power)
        if rejected:
            outcome = DifferenceOutcome.REGRESSED
        elif p_non_inferior <= alpha:
            outcome = DifferenceOutcome.WITHIN_TOLERANCE
        else:
            outcome = DifferenceOutcome.INCONCLUSIVE
        judgements.append(
            Judgement(
                outcome=outcome,
                estimate=member.difference.estimate,
                interval_lower=lower,
                interval_upper=upper,
                confidence_level=confidence,
                standard_error=member.difference.standard_error,
                p_value=member.difference.two_sided_p_value(0.0),
                regression_p_value=p_regression,
                adjusted_p_value=adjusted,
                non_inferiority_p_value=p_non_inferior,
                minimum_detectable_drop=mde,
                weight=share,
                reason=_reason(
                    member, outcome, (lower, upper), confidence, adjusted, alpha, mde, power
                ),
            )
        )
    return judgements


def _reason(  # noqa: PLR0917 - one sentence from everything the judgement found
    member: GatedDifference,
    outcome: DifferenceOutcome,
    interval: tuple[float, float],
    confidence: float,
    adjusted: float,
    alpha: float,
    mde: float,
    power: float,
) -> str:
    lower, upper = interval
    boundary = member.boundary
    span = f"the {confidence:.0%} interval of the change [{lower:+.4f}, {upper:+.4f}]"
    worse_side = "below" if member.higher_is_better else "above"
    good_side = "above" if member.higher_is_better else "below"
    if outcome is DifferenceOutcome.REGRESSED:
        return (
            f"worse than tolerated: {span} lies {worse_side} {boundary:+.4f}, and the drop "
            f"stays significant across the family (Holm-adjusted p = {adjusted:.2g} <= {alpha:g})"
        )
    if outcome is DifferenceOutcome.WITHIN_TOLERANCE:
        return f"within tolerance: {span} lies {good_side} {boundary:+.4f}"
    beyond = upper < boundary if member.higher_is_better else lower > boundary
    if beyond:
        return (
            f"inconclusive: {span} lies {worse_side} {boundary:+.4f}, but not significantly "
            f"once every gated comparison is counted (Holm-adjusted p = {adjusted:.2g} > "
            f"{alpha:g})"
        )
    return (
        f"inconclusive: {span} contains {boundary:+.4f}; at this sample size only drops of "
        f"{mde:.4f} or more are caught with {power:.0%} power"
    )
