"""The regression gate: candidate versus baseline on the same examples, judged per metric.

For every evaluation set, every slice (``""`` = all examples) and every metric both sides
define, :func:`judge` computes the delta (candidate - baseline), its paired-bootstrap
confidence interval at ``1 - significance_level``, and a two-sided p-value from the paired
test (McNemar for per-example 0/1 metrics unless the policy forces the bootstrap; the
bootstrap otherwise). Then, for the gated metrics:

* **INSUFFICIENT_DATA** — the set has fewer than ``min_examples`` scored examples (then every
  comparison of the set is), or the slice fewer than ``min_slice_size`` (that slice is
  reported but not judged);
* **REGRESSED** — the drop (a rise, for ``loss``) is larger than the metric's tolerance *and*
  the test is significant (p < alpha); or, overall, the candidate is past the metric's minimum
  absolute score whatever the baseline;
* **WITHIN_TOLERANCE** otherwise. Metrics without a gate are **NOT_GATED**.

The verdict is REGRESSED if any comparison regressed; else INSUFFICIENT_DATA if any gated
metric could not be judged on any set as a whole (never a silent pass); else PASSED.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from services.evaluator.domain.outcomes import (
    ACCURACY,
    LOSS,
    MACRO_F1,
    TOKEN_ACCURACY,
    ExampleOutcomes,
    TaskType,
    higher_is_better,
    per_example_binary,
    point_values,
    slice_indices,
)
from services.evaluator.domain.statistics import (
    mcnemar_p_value,
    resample_weights,
    summarize_bootstrap,
)

#: Rounding slack when comparing a drop with its tolerance (both in the metric's units).
_EPSILON = 1e-12


class SignificanceTest(StrEnum):
    """The paired test behind a p-value."""

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
    #: ``None``: McNemar for per-example 0/1 metrics, the bootstrap for the rest.
    test: SignificanceTest | None = None
    bootstrap_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.significance_level <= 0.5:
            raise ValueError("significance_level must be in (0, 0.5]")
        if self.min_slice_size < 1 or self.min_examples < 1:
            raise ValueError("minimum sizes must be at least 1")
        if self.bootstrap_resamples < 100:
            raise ValueError("bootstrap_resamples must be at least 100")

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
        )

    @property
    def confidence_level(self) -> float:
        return 1.0 - self.significance_level

    def gate_for(self, metric: str) -> MetricGate | None:
        return next((gate for gate in self.metrics if gate.metric == metric), None)


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
    p_value: float
    test: SignificanceTest
    example_count: int
    higher_is_better: bool
    tolerance: float
    outcome: ComparisonOutcome

    @property
    def drop(self) -> float:
        """How much worse the candidate is, in the metric's units (negative: better)."""
        return -self.delta if self.higher_is_better else self.delta


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

    @property
    def most_severe(self) -> MetricComparison | None:
        """The regression to headline: lowest p-value, then largest drop."""
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


def _paired_p_value(
    metric: str,
    candidate: ExampleOutcomes,
    baseline: ExampleOutcomes,
    deltas_p_value: float,
    policy: GatePolicy,
) -> tuple[float, SignificanceTest]:
    if per_example_binary(metric) and policy.test is not SignificanceTest.PAIRED_BOOTSTRAP:
        cand = candidate.correctness(metric)
        base = baseline.correctness(metric)
        if cand is not None and base is not None:
            both = np.isfinite(cand) & np.isfinite(base)
            return mcnemar_p_value(base[both] > 0.5, cand[both] > 0.5), SignificanceTest.MCNEMAR
    return deltas_p_value, SignificanceTest.PAIRED_BOOTSTRAP


def _outcome(
    comparison_drop: float,
    p_value: float,
    candidate_value: float,
    gate: MetricGate | None,
    *,
    metric: str,
    overall: bool,
    judgeable: bool,
    policy: GatePolicy,
) -> ComparisonOutcome:
    if gate is None:
        return ComparisonOutcome.NOT_GATED
    if not judgeable:
        return ComparisonOutcome.INSUFFICIENT_DATA
    if overall and gate.min_absolute_score is not None:
        past_floor = (
            candidate_value < gate.min_absolute_score
            if higher_is_better(metric)
            else candidate_value > gate.min_absolute_score
        )
        if past_floor:
            return ComparisonOutcome.REGRESSED
    if comparison_drop > gate.tolerance + _EPSILON and p_value < policy.significance_level:
        return ComparisonOutcome.REGRESSED
    return ComparisonOutcome.WITHIN_TOLERANCE


def compare_set(paired: PairedSet, policy: GatePolicy) -> list[MetricComparison]:
    """Every comparison of one evaluation set: each metric overall and in each slice.

    Raises :class:`~services.evaluator.domain.outcomes.ExampleMismatch` when the baseline was
    not scored on the same examples as the candidate.
    """
    candidate = paired.candidate
    baseline = paired.baseline.aligned_to(candidate.example_ids)
    set_counts = candidate.metric_counts()
    comparisons: list[MetricComparison] = []
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
        overall = slice_name == ""
        for metric in cand_points:
            if metric not in base_points:
                continue
            delta = cand_points[metric] - base_points[metric]
            bootstrap = summarize_bootstrap(
                delta, cand_samples[metric] - base_samples[metric], policy.confidence_level
            )
            p_value, test = _paired_p_value(metric, cand, base, bootstrap.p_value, policy)
            count = counts.get(metric, 0)
            judgeable = set_counts.get(metric, 0) >= policy.min_examples and (
                overall or count >= policy.min_slice_size
            )
            gate = policy.gate_for(metric)
            better_up = higher_is_better(metric)
            comparisons.append(
                MetricComparison(
                    metric=metric,
                    slice=slice_name,
                    evaluation_set=paired.label,
                    baseline=base_points[metric],
                    candidate=cand_points[metric],
                    delta=delta,
                    delta_ci_lower=bootstrap.ci_lower,
                    delta_ci_upper=bootstrap.ci_upper,
                    confidence_level=policy.confidence_level,
                    p_value=p_value,
                    test=test,
                    example_count=count,
                    higher_is_better=better_up,
                    tolerance=gate.tolerance if gate else 0.0,
                    outcome=_outcome(
                        -delta if better_up else delta,
                        p_value,
                        cand_points[metric],
                        gate,
                        metric=metric,
                        overall=overall,
                        judgeable=judgeable,
                        policy=policy,
                    ),
                )
            )
    return comparisons


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
        )
        for gate in policy.metrics
        if gate.metric not in present
    ]


def judge(sets: Sequence[PairedSet], policy: GatePolicy) -> GateResult:
    """Judge a candidate against its baseline on every evaluation set (see the module doc)."""
    if not sets:
        raise ValueError("judging needs at least one evaluation set")
    comparisons: list[MetricComparison] = []
    candidate_metrics: list[MetricValue] = []
    baseline_metrics: list[MetricValue] = []
    for paired in sets:
        set_comparisons = compare_set(paired, policy)
        comparisons += set_comparisons + _unjudged_gates(set_comparisons, paired.label, policy)
        candidate_metrics += metric_values(paired.candidate, paired.label)
        baseline_metrics += metric_values(paired.baseline, paired.label)
    regressions = sorted(
        (c for c in comparisons if c.outcome is ComparisonOutcome.REGRESSED),
        key=lambda c: (c.p_value, -c.drop),
    )
    if regressions:
        verdict = Verdict.REGRESSED
    elif any(
        c.outcome is ComparisonOutcome.INSUFFICIENT_DATA and c.slice == "" for c in comparisons
    ):
        verdict = Verdict.INSUFFICIENT_DATA
    else:
        verdict = Verdict.PASSED
    return GateResult(
        verdict=verdict,
        comparisons=tuple(comparisons),
        candidate_metrics=tuple(candidate_metrics),
        baseline_metrics=tuple(baseline_metrics),
        regressions=tuple(regressions),
    )
