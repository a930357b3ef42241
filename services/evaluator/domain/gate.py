"""The regression gate: candidate versus baseline on the same examples, judged per metric.

For every evaluation set, every slice (``""`` = all examples) and every metric both sides
define, :func:`judge` measures the paired difference δ = candidate - baseline: with Tango's
score test for per-example 0/1 metrics (accuracy, exact match; McNemar's test at δ = 0), and
with a paired-bootstrap standard error otherwise (``shared.stats.paired``). The comparisons
the policy gates — its gated metrics (the *primary* one and the *guardrails*), overall and in
its gated slices, on every set — form one family, judged by the rule of
``shared.stats.decision`` (the registry uses the same rule):

* **REGRESSED** — a drop beyond the metric's tolerance is shown at the family-wise level (Holm's
  weighted procedure over the whole family, so an unchanged model is called a regression with
  probability at most alpha however many slices are gated); or, overall, the candidate is past the
  metric's minimum absolute score whatever the baseline;
* **WITHIN_TOLERANCE** — non-inferiority is shown: the ``1 - 2alpha`` interval of δ lies on the good
  side of the tolerated drop;
* **INSUFFICIENT_DATA** — neither could be shown, or the set has fewer than ``min_examples``
  examples, or the slice fewer than ``min_slice_size`` (below those the tests' normal
  approximations are not trusted). Everything else is **NOT_GATED**: reported, not judged.

The verdict is REGRESSED if any comparison regressed; else PASSED if the primary metric was
shown within tolerance overall on every evaluation set (guardrails and slices must not regress,
but need not prove themselves); else INSUFFICIENT_DATA — never a silent pass. Every comparison
carries its interval, its minimum detectable drop at 80 % power, and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from services.evaluator.domain.outcomes import (
    ACCURACY,
    LOSS,
    MACRO_F1,
    TOKEN_ACCURACY,
    ExampleOutcomes,
    higher_is_better,
    per_example_binary,
    point_values,
    slice_indices,
)
from services.evaluator.domain.statistics import resample_weights
from shared.stats.decision import (
    DEFAULT_POWER,
    DifferenceOutcome,
    GatedDifference,
    Judgement,
    judge_differences,
)
from shared.stats.paired import NormalDifference, PairedDifference, PairedProportions
from shared.task_types import TaskType


class SignificanceTest(StrEnum):
    """How a paired difference is tested (MCNEMAR: Tango's score test, McNemar's at δ = 0)."""

    PAIRED_BOOTSTRAP = "PAIRED_BOOTSTRAP"
    MCNEMAR = "MCNEMAR"


class Verdict(StrEnum):
    """The outcome of an evaluation (FAILED: the evaluation itself broke)."""

    PASSED = "PASSED"
    REGRESSED = "REGRESSED"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"
    FAILED = "FAILED"


class ComparisonOutcome(StrEnum):
    """How one comparison came out under the gate."""

    WITHIN_TOLERANCE = "WITHIN_TOLERANCE"
    REGRESSED = "REGRESSED"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"
    NOT_GATED = "NOT_GATED"


_OUTCOME_OF = {
    DifferenceOutcome.REGRESSED: ComparisonOutcome.REGRESSED,
    DifferenceOutcome.WITHIN_TOLERANCE: ComparisonOutcome.WITHIN_TOLERANCE,
    DifferenceOutcome.INCONCLUSIVE: ComparisonOutcome.INSUFFICIENT_DATA,
}


@dataclass(frozen=True)
class MetricGate:
    """The gate for one metric: the tolerated drop and an optional absolute floor."""

    metric: str
    tolerance: float = 0.0
    #: The lowest acceptable value overall (the highest, for ``loss``).
    min_absolute_score: float | None = None


DEFAULT_SIGNIFICANCE_LEVEL = 0.05
DEFAULT_MIN_SLICE_SIZE = 30
DEFAULT_MIN_EXAMPLES = 50
DEFAULT_BOOTSTRAP_RESAMPLES = 1000
#: The share of alpha that the primary metric's overall comparisons (one per evaluation set) get
#: in the Holm family; the guardrails and the gated slices share the rest. Most of it, so that
#: a drop of the metric that matters is caught with nearly the power of a lone test, while
#: many slices cannot make an unchanged model fail more often than alpha.
PRIMARY_ALPHA_SHARE = 0.8


def default_metric_gates(task_type: TaskType) -> tuple[MetricGate, ...]:
    """The gated metrics when a model names none (as ``GatePolicy.metrics`` documents)."""
    if task_type is TaskType.CLASSIFICATION:
        return (MetricGate(ACCURACY, 0.01), MetricGate(MACRO_F1, 0.01))
    return (MetricGate(TOKEN_ACCURACY, 0.01), MetricGate(LOSS, 0.05))


@dataclass(frozen=True)
class GatePolicy:
    """What counts as a regression, every default resolved."""

    metrics: tuple[MetricGate, ...]
    significance_level: float = DEFAULT_SIGNIFICANCE_LEVEL
    min_slice_size: int = DEFAULT_MIN_SLICE_SIZE
    min_examples: int = DEFAULT_MIN_EXAMPLES
    #: ``None``: Tango's score test for per-example 0/1 metrics, the bootstrap for the rest.
    test: SignificanceTest | None = None
    bootstrap_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES
    seed: int = 0
    #: The metric that must be shown within tolerance for a PASS; ``""``: the first gated one.
    primary_metric: str = ""
    #: The slices whose comparisons are gated; empty: every slice. Others are reported only.
    gated_slices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.significance_level < 0.5:
            raise ValueError("significance_level must be in (0, 0.5)")
        if self.min_slice_size < 1 or self.min_examples < 1:
            raise ValueError("minimum sizes must be at least 1")
        if self.bootstrap_resamples < 100:
            raise ValueError("bootstrap_resamples must be at least 100")
        if not self.metrics:
            raise ValueError("a gate needs at least one gated metric")
        if not self.primary_metric:
            object.__setattr__(self, "primary_metric", self.metrics[0].metric)
        if self.gate_for(self.primary_metric) is None:
            raise ValueError(f"the primary metric {self.primary_metric!r} is not gated")

    @classmethod
    def resolve(
        cls,
        task_type: TaskType,
        *,
        metrics: Sequence[MetricGate] = (),
        significance_level: float = 0.0,
        min_slice_size: int = 0,
        min_examples: int = 0,
        test: SignificanceTest | None = None,
        bootstrap_resamples: int = 0,
        seed: int | None = None,
        primary_metric: str = "",
        gated_slices: Sequence[str] = (),
    ) -> GatePolicy:
        """A policy from API-style values, where 0 / empty / None mean "the default"."""
        return cls(
            metrics=tuple(metrics) or default_metric_gates(task_type),
            significance_level=significance_level or DEFAULT_SIGNIFICANCE_LEVEL,
            min_slice_size=min_slice_size or DEFAULT_MIN_SLICE_SIZE,
            min_examples=min_examples or DEFAULT_MIN_EXAMPLES,
            test=test,
            bootstrap_resamples=bootstrap_resamples or DEFAULT_BOOTSTRAP_RESAMPLES,
            seed=0 if seed is None else seed,
            primary_metric=primary_metric,
            gated_slices=tuple(gated_slices),
        )

    @property
    def confidence_level(self) -> float:
        """Of the reported intervals: ``1 - 2alpha``, each side a one-sided test at alpha."""
        return 1.0 - 2.0 * self.significance_level

    def gate_for(self, metric: str) -> MetricGate | None:
        return next((gate for gate in self.metrics if gate.metric == metric), None)

    def gates_slice(self, slice_name: str) -> bool:
        return not slice_name or not self.gated_slices or slice_name in self.gated_slices


@dataclass(frozen=True)
class MetricValue:
    """One metric value, overall (``slice == ""``) or for one slice, on one evaluation set."""

    metric: str
    slice: str
    evaluation_set: str
    value: float
    example_count: int


@dataclass(frozen=True)
class MetricComparison:
    """Candidate versus baseline for one metric on one slice of one set."""

    metric: str
    slice: str
    evaluation_set: str
    baseline: float
    candidate: float
    delta: float
    delta_ci_lower: float
    delta_ci_upper: float
    confidence_level: float
    #: Two-sided p-value of "no difference at all".
    p_value: float
    test: SignificanceTest
    example_count: int
    higher_is_better: bool
    tolerance: float
    outcome: ComparisonOutcome
    #: Standard error of ``delta`` under "no difference" (``delta / standard_error`` is the
    #: test statistic at zero); NaN when nothing could be measured.
    standard_error: float = math.nan
    #: The smallest true drop (rise, for loss) the gate catches with 80 % power here.
    minimum_detectable_drop: float = math.nan
    #: The regression p-value adjusted over the gate's family (1 when not in it).
    adjusted_p_value: float = 1.0
    #: This comparison's share of alpha in the family; 0 when it is not in the family.
    family_weight: float = 0.0
    #: Why the outcome is what it is, in a sentence.
    reason: str = ""

    @property
    def drop(self) -> float:
        """How much worse the candidate is, in the metric's units (negative: better)."""
        return -self.delta if self.higher_is_better else self.delta


def regression_severity(comparison: MetricComparison) -> tuple[float, float]:
    """Sort key of regressions, most severe first: most significant, then largest drop."""
    return (comparison.adjusted_p_value, -comparison.drop)


@dataclass(frozen=True)
class PairedSet:
    """Candidate and baseline outcomes on one evaluation set (``label`` ``""``: primary)."""

    label: str
    candidate: ExampleOutcomes
    baseline: ExampleOutcomes


@dataclass(frozen=True)
class GateResult:
    """What the gate decided, and everything it decided on."""

    verdict: Verdict
    comparisons: tuple[MetricComparison, ...]
    candidate_metrics: tuple[MetricValue, ...]
    baseline_metrics: tuple[MetricValue, ...]
    regressions: tuple[MetricComparison, ...] = field(default=())
    #: Why the verdict is what it is, in a sentence.
    reason: str = ""

    @property
    def most_severe(self) -> MetricComparison | None:
        """The regression to headline: most significant, then largest drop."""
        return self.regressions[0] if self.regressions else None


def metric_values(outcomes: ExampleOutcomes, evaluation_set: str = "") -> list[MetricValue]:
    """Every defined metric of ``outcomes``, overall then per slice (sorted by name)."""
    values: list[MetricValue] = []
    for slice_name, indices in sorted(slice_indices(outcomes).items()):
        subset = outcomes.select(indices)
        counts = subset.metric_counts()
        for metric, value in point_values(subset).items():
            values.append(
                MetricValue(metric, slice_name, evaluation_set, value, counts.get(metric, 0))
            )
    return values


# -- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Measured:
    """One comparison before the family is judged."""

    comparison: MetricComparison
    #: ``None`` when the difference could not be measured (too few defined values).
    difference: PairedDifference | None
    #: Gated, and large enough to be judged: a member of the family.
    in_family: bool
    #: Why it is not judged, when it is gated but too small.
    too_small: str


def _difference(
    metric: str,
    candidate: ExampleOutcomes,
    baseline: ExampleOutcomes,
    resampled_delta: np.ndarray,
    observed: float,
    *,
    policy: GatePolicy,
) -> tuple[PairedDifference | None, SignificanceTest]:
    if per_example_binary(metric) and policy.test is not SignificanceTest.PAIRED_BOOTSTRAP:
        cand = candidate.correctness(metric)
        base = baseline.correctness(metric)
        if cand is not None and base is not None:
            both = np.isfinite(cand) & np.isfinite(base)
            if not both.any():
                return None, SignificanceTest.MCNEMAR
            proportions = PairedProportions.of(base[both] > 0.5, cand[both] > 0.5)
            return proportions, SignificanceTest.MCNEMAR
    if np.count_nonzero(np.isfinite(resampled_delta)) < 2:
        return None, SignificanceTest.PAIRED_BOOTSTRAP
    return (
        NormalDifference.from_bootstrap(observed, resampled_delta),
        SignificanceTest.PAIRED_BOOTSTRAP,
    )


def _measure_set(paired: PairedSet, policy: GatePolicy) -> list[_Measured]:
    """Every comparison of one set, measured: each metric overall and in each slice.

    Raises :class:`~services.evaluator.domain.outcomes.ExampleMismatch` when the baseline was
    not scored on the same examples as the candidate.
    """
    candidate = paired.candidate
    baseline = paired.baseline.aligned_to(candidate.example_ids)
    set_counts = candidate.metric_counts()
    measured: list[_Measured] = []
    for slice_name, indices in sorted(slice_indices(candidate).items()):
        cand = candidate.select(indices)
        base = baseline.select(indices)
        weights = resample_weights(
            len(indices),
            policy.bootstrap_resamples,
            policy.seed,
            stream=f"{paired.label}/{slice_name}",
        )
        cand_samples = cand.metric_samples(weights)
        base_samples = base.metric_samples(weights)
        cand_points = point_values(cand)
        base_points = point_values(base)
        counts = cand.metric_counts()
        for metric in cand_points:
            if metric not in base_points:
                continue
            delta = cand_points[metric] - base_points[metric]
            difference, test = _difference(
                metric,
                cand,
                base,
                cand_samples[metric] - base_samples[metric],
                delta,
                policy=policy,
            )
            count = counts.get(metric, 0)
            gate = policy.gate_for(metric)
            gated = gate is not None and policy.gates_slice(slice_name)
            too_small = ""
            if set_counts.get(metric, 0) < policy.min_examples:
                too_small = (
                    f"too few examples to judge: {set_counts.get(metric, 0)} on the set, "
                    f"the gate needs {policy.min_examples}"
                )
            elif slice_name and count < policy.min_slice_size:
                too_small = (
                    f"too few examples to judge: {count} in the slice, the gate needs "
                    f"{policy.min_slice_size}"
                )
            elif difference is None:
                too_small = "too few examples with a value on both sides to measure the change"
            measured.append(
                _Measured(
                    MetricComparison(
                        metric=metric,
                        slice=slice_name,
                        evaluation_set=paired.label,
                        baseline=base_points[metric],
                        candidate=cand_points[metric],
                        delta=delta,
                        delta_ci_lower=math.nan,
                        delta_ci_upper=math.nan,
                        confidence_level=policy.confidence_level,
                        p_value=1.0,
                        test=test,
                        example_count=count,
                        higher_is_better=higher_is_better(metric),
                        tolerance=gate.tolerance if gate else 0.0,
                        outcome=ComparisonOutcome.NOT_GATED,
                    ),
                    difference=difference,
                    in_family=gated and not too_small,
                    too_small=too_small if gated else "",
                )
            )
    return measured


def _unjudged_gates(
    comparisons: Iterable[MetricComparison], label: str, policy: GatePolicy
) -> list[MetricComparison]:
    """Gated metrics with no overall comparison on a set (e.g. nothing was generated)."""
    present = {c.metric for c in comparisons if c.slice == "" and c.evaluation_set == label}
    return [
        MetricComparison(
            metric=gate.metric,
            slice="",
            evaluation_set=label,
            baseline=math.nan,
            candidate=math.nan,
            delta=math.nan,
            delta_ci_lower=math.nan,
            delta_ci_upper=math.nan,
            confidence_level=policy.confidence_level,
            p_value=1.0,
            test=SignificanceTest.PAIRED_BOOTSTRAP,
            example_count=0,
            higher_is_better=higher_is_better(gate.metric),
            tolerance=gate.tolerance,
            outcome=ComparisonOutcome.INSUFFICIENT_DATA,
            reason="the metric could not be computed on both sides of this set",
        )
        for gate in policy.metrics
        if gate.metric not in present
    ]


# -- judging --------------------------------------------------------------------------------


def _is_primary(comparison: MetricComparison, policy: GatePolicy) -> bool:
    return comparison.metric == policy.primary_metric and comparison.slice == ""


def _family_weights(members: Sequence[_Measured], policy: GatePolicy) -> list[float]:
    """Each member's share of alpha: the primary overall comparisons share PRIMARY_ALPHA_SHARE,
    everything else the rest (either group takes all when the other is empty)."""
    primary = [_is_primary(m.comparison, policy) for m in members]
    primaries = sum(primary)
    others = len(members) - primaries
    if not primaries or not others:
        return [1.0 / len(members)] * len(members)
    return [
        PRIMARY_ALPHA_SHARE / primaries if is_primary else (1 - PRIMARY_ALPHA_SHARE) / others
        for is_primary in primary
    ]


def _judged(
    comparison: MetricComparison, judgement: Judgement, *, in_family: bool
) -> MetricComparison:
    return replace(
        comparison,
        delta_ci_lower=judgement.interval_lower,
        delta_ci_upper=judgement.interval_upper,
        confidence_level=judgement.confidence_level,
        p_value=judgement.p_value,
        standard_error=judgement.standard_error,
        minimum_detectable_drop=judgement.minimum_detectable_drop,
        adjusted_p_value=judgement.adjusted_p_value if in_family else 1.0,
        family_weight=judgement.weight if in_family else 0.0,
        outcome=_OUTCOME_OF[judgement.outcome] if in_family else comparison.outcome,
        reason=judgement.reason if in_family else "",
    )


def _alone(measured: _Measured, policy: GatePolicy) -> MetricComparison:
    """A comparison outside the family: its interval and tests, for information only."""
    comparison = measured.comparison
    if measured.difference is None:
        reason = measured.too_small or "reported, not gated; too few values to measure"
        outcome = ComparisonOutcome.INSUFFICIENT_DATA if measured.too_small else comparison.outcome
        return replace(comparison, outcome=outcome, reason=reason)
    alone = GatedDifference(measured.difference, comparison.tolerance, comparison.higher_is_better)
    judgement = judge_differences([alone], policy.significance_level, power=DEFAULT_POWER)[0]
    judged = _judged(comparison, judgement, in_family=False)
    if measured.too_small:
        return replace(
            judged, outcome=ComparisonOutcome.INSUFFICIENT_DATA, reason=measured.too_small
        )
    return replace(judged, reason="reported, not gated")


def _floor_passed(comparison: MetricComparison, policy: GatePolicy) -> float | None:
    """The overall floor (minimum absolute score) the candidate is past, if any."""
    gate = policy.gate_for(comparison.metric)
    floor = gate.min_absolute_score if gate is not None else None
    if floor is None or comparison.slice:
        return None
    past = (
        comparison.candidate < floor
        if comparison.higher_is_better
        else comparison.candidate > floor
    )
    return floor if past else None


def _with_floor(comparison: MetricComparison, policy: GatePolicy) -> MetricComparison:
    floor = _floor_passed(comparison, policy)
    if floor is None:
        return comparison
    side = "below" if comparison.higher_is_better else "above"
    return replace(
        comparison,
        outcome=ComparisonOutcome.REGRESSED,
        reason=(
            f"past the floor: {comparison.candidate:.4f} is {side} the minimum absolute score "
            f"{floor:g}, whatever the baseline"
        ),
    )


def _verdict(comparisons: Sequence[MetricComparison], policy: GatePolicy) -> tuple[Verdict, str]:
    regressed = [c for c in comparisons if c.outcome is ComparisonOutcome.REGRESSED]
    if regressed:
        return Verdict.REGRESSED, f"{len(regressed)} gated comparison(s) regressed"
    primaries = [c for c in comparisons if _is_primary(c, policy)]
    unshown = [c for c in primaries if c.outcome is not ComparisonOutcome.WITHIN_TOLERANCE]
    if primaries and not unshown:
        return Verdict.PASSED, (
            f"{policy.primary_metric} shown within tolerance on every evaluation set, and "
            "no gated comparison regressed"
        )
    where = ", ".join(repr(c.evaluation_set or "primary set") for c in unshown) or "any set"
    return Verdict.INSUFFICIENT_DATA, (
        f"{policy.primary_metric} could not be shown within tolerance on {where}"
    )


def judge(sets: Sequence[PairedSet], policy: GatePolicy) -> GateResult:
    """Judge a candidate against its baseline on every evaluation set (see the module doc)."""
    if not sets:
        raise ValueError("judging needs at least one evaluation set")
    measured: list[_Measured] = []
    missing: list[MetricComparison] = []
    candidate_metrics: list[MetricValue] = []
    baseline_metrics: list[MetricValue] = []
    for paired in sets:
        set_measured = _measure_set(paired, policy)
        measured += set_measured
        missing += _unjudged_gates((m.comparison for m in set_measured), paired.label, policy)
        candidate_metrics += metric_values(paired.candidate, paired.label)
        baseline_metrics += metric_values(paired.baseline, paired.label)
    members = [(m, m.difference) for m in measured if m.in_family and m.difference is not None]
    weights = _family_weights([m for m, _ in members], policy) if members else []
    family = [
        GatedDifference(difference, m.comparison.tolerance, m.comparison.higher_is_better, weight)
        for (m, difference), weight in zip(members, weights, strict=True)
    ]
    judged = iter(judge_differences(family, policy.significance_level, power=DEFAULT_POWER))
    comparisons = [
        _with_floor(
            _judged(m.comparison, next(judged), in_family=True)
            if m.in_family and m.difference is not None
            else _alone(m, policy),
            policy,
        )
        for m in measured
    ]
    comparisons += missing
    verdict, reason = _verdict(comparisons, policy)
    regressions = sorted(
        (c for c in comparisons if c.outcome is ComparisonOutcome.REGRESSED),
        key=regression_severity,
    )
    return GateResult(
        verdict=verdict,
        comparisons=tuple(comparisons),
        candidate_metrics=tuple(candidate_metrics),
        baseline_metrics=tuple(baseline_metrics),
        regressions=tuple(regressions),
        reason=reason,
    )
