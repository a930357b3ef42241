"""The regression gate on constructed cases: what must regress, what must pass, and what
the data cannot tell."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.evaluator.domain.gate import (
    PRIMARY_ALPHA_SHARE,
    ComparisonOutcome,
    GatePolicy,
    MetricGate,
    PairedSet,
    SignificanceTest,
    Verdict,
    judge,
)
from services.evaluator.domain.outcomes import (
    CausalLMOutcomes,
    ClassificationOutcomes,
    ExampleMismatch,
    point_values,
)
from services.evaluator.domain.statistics import resample_weights
from shared.stats.decision import DifferenceOutcome, GatedDifference, judge_differences
from shared.stats.paired import PairedProportions
from shared.task_types import TaskType

POLICY = GatePolicy.resolve(TaskType.CLASSIFICATION)


def classification(
    correct: list[bool] | np.ndarray,
    *,
    slices: list[str] | None = None,
    ids: list[str] | None = None,
    loss_when_right: float = 0.2,
    loss_when_wrong: float = 1.5,
) -> ClassificationOutcomes:
    """Binary sentiment outcomes with the given per-example correctness (truth alternates)."""
    n = len(correct)
    truth = tuple("fresh" if i % 2 == 0 else "rotten" for i in range(n))
    flip = {"fresh": "rotten", "rotten": "fresh"}
    predicted = tuple(t if ok else flip[t] for t, ok in zip(truth, correct, strict=True))
    return ClassificationOutcomes(
        example_ids=tuple(ids or (f"r-{i}" for i in range(n))),
        slices=tuple(slices or [""] * n),
        true_labels=truth,
        predicted_labels=predicted,
        losses=np.asarray([loss_when_right if ok else loss_when_wrong for ok in correct]),
    )


def correctness(n: int, wrong: set[int]) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[list(wrong)] = False
    return mask


def overall(result, metric: str, evaluation_set: str = ""):
    return next(
        c
        for c in result.comparisons
        if c.metric == metric and c.slice == "" and c.evaluation_set == evaluation_set
    )


# -- resampling -------------------------------------------------------------------------------


def test_resample_weights_are_seeded_and_sum_to_the_example_count():
    first = resample_weights(50, 200, seed=7, stream="negation")
    again = resample_weights(50, 200, seed=7, stream="negation")
    other = resample_weights(50, 200, seed=7, stream="sarcasm")
    assert first.shape == (200, 50)
    assert (first.sum(axis=1) == 50).all()
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


# -- metrics ----------------------------------------------------------------------------------


def test_classification_metrics_by_hand():
    outcomes = ClassificationOutcomes(
        example_ids=("a", "b", "c", "d", "e"),
        slices=("", "", "", "", ""),
        true_labels=("x", "x", "x", "y", "y"),
        predicted_labels=("x", "x", "y", "y", "x"),
        losses=np.array([0.1, 0.2, 1.0, 0.3, 2.0]),
    )
    values = point_values(outcomes)
    assert values["accuracy"] == pytest.approx(3 / 5)
    assert values["loss"] == pytest.approx(3.6 / 5)
    # x: tp 2, fp 1, fn 1 -> 2/3; y: tp 1, fp 1, fn 1 -> 1/2
    assert values["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert values["recall/x"] == pytest.approx(2 / 3)
    assert values["recall/y"] == pytest.approx(1 / 2)


def test_causal_lm_metrics_weigh_tokens_and_count_only_generated_examples():
    outcomes = CausalLMOutcomes(
        example_ids=("a", "b", "c"),
        slices=("", "", ""),
        loss_sums=np.array([2.0, 6.0, 1.0]),
        token_counts=np.array([2, 6, 2]),
        correct_tokens=np.array([1, 3, 2]),
        exact_matches=np.array([1.0, 0.0, math.nan]),
    )
    values = point_values(outcomes)
    assert values["loss"] == pytest.approx(9.0 / 10)
    assert values["token_accuracy"] == pytest.approx(6 / 10)
    assert values["exact_match"] == pytest.approx(0.5)
    assert outcomes.metric_counts()["exact_match"] == 2


# -- the gate ---------------------------------------------------------------------------------


def test_a_clear_regression_is_detected_with_its_interval_mde_and_reason():
    n = 400
    baseline = classification(correctness(n, set(range(0, 60))))  # 85 %
    candidate = classification(correctness(n, set(range(0, 120))))  # 70 %
    result = judge([PairedSet("", candidate, baseline)], POLICY)

    assert result.verdict is Verdict.REGRESSED
    accuracy = overall(result, "accuracy")
    assert accuracy.outcome is ComparisonOutcome.REGRESSED
    assert accuracy.test is SignificanceTest.MCNEMAR
    assert accuracy.delta == pytest.approx(-0.15)
    assert accuracy.delta_ci_lower < accuracy.delta < accuracy.delta_ci_upper < -0.01
    assert accuracy.confidence_level == pytest.approx(0.90)
    assert accuracy.p_value < 1e-10
    assert accuracy.adjusted_p_value < 1e-10
    assert accuracy.family_weight == pytest.approx(PRIMARY_ALPHA_SHARE)
    assert 0.01 < accuracy.minimum_detectable_drop < 0.15
    assert accuracy.reason.startswith("worse than tolerated")
    assert accuracy.example_count == n
    assert result.most_severe is not None
    assert result.most_severe.slice == ""
    loss = overall(result, "loss")
    assert loss.test is SignificanceTest.PAIRED_BOOTSTRAP
    assert loss.outcome is ComparisonOutcome.NOT_GATED  # reported, not gated by default
    assert loss.family_weight == 0.0
    assert loss.delta > 0
    assert loss.delta_ci_lower < loss.delta < loss.delta_ci_upper
    assert not loss.higher_is_better


def _retrained(n: int, seed: int, *, new_mistakes: int, fixes: int) -> tuple[np.ndarray, ...]:
    """Baseline correctness (80 %) and a retrained candidate's: some new mistakes, some fixes."""
    rng = np.random.default_rng(seed)
    base_correct = rng.random(n) < 0.8
    cand_correct = base_correct.copy()
    cand_correct[rng.choice(np.flatnonzero(base_correct), size=new_mistakes, replace=False)] = False
    cand_correct[rng.choice(np.flatnonzero(~base_correct), size=fixes, replace=False)] = True
    return base_correct, cand_correct


def test_noise_on_a_small_set_is_neither_a_regression_nor_a_pass():
    base_correct, cand_correct = _retrained(400, 3, new_mistakes=14, fixes=11)
    result = judge(
        [PairedSet("", classification(cand_correct), classification(base_correct))], POLICY
    )
    accuracy = overall(result, "accuracy")
    # 25 disagreements in 400: a drop of a point can be neither shown nor ruled out
    assert accuracy.delta_ci_lower < -0.01 < accuracy.delta_ci_upper
    assert accuracy.outcome is ComparisonOutcome.INSUFFICIENT_DATA
    assert result.verdict is Verdict.INSUFFICIENT_DATA
    assert accuracy.minimum_detectable_drop > 0.04
    assert f"{accuracy.minimum_detectable_drop:.4f}" in accuracy.reason
    assert "accuracy could not be shown within tolerance" in result.reason


def test_the_same_noise_on_a_large_set_passes():
    base_correct, cand_correct = _retrained(8000, 3, new_mistakes=200, fixes=200)
    result = judge(
        [PairedSet("", classification(cand_correct), classification(base_correct))], POLICY
    )
    accuracy = overall(result, "accuracy")
    assert -0.01 < accuracy.delta_ci_lower < 0 < accuracy.delta_ci_upper
    assert accuracy.outcome is ComparisonOutcome.WITHIN_TOLERANCE
    assert accuracy.reason.startswith("within tolerance")
    assert result.verdict is Verdict.PASSED


def test_a_drop_beyond_tolerance_that_is_not_significant_is_not_a_regression():
    n = 200
    baseline = classification(correctness(n, set(range(40))))
    candidate = classification(correctness(n, set(range(44))))  # 2 points worse: 4 vs 0 pairs
    result = judge([PairedSet("", candidate, baseline)], POLICY)
    accuracy = overall(result, "accuracy")
    assert accuracy.drop > POLICY.gate_for("accuracy").tolerance  # type: ignore[union-attr]
    assert accuracy.outcome is ComparisonOutcome.INSUFFICIENT_DATA
    assert result.verdict is Verdict.INSUFFICIENT_DATA


def test_a_significant_drop_within_tolerance_passes():
    n = 10_000
    baseline = classification(correctness(n, set(range(1000))))
    candidate = classification(correctness(n, set(range(1050))))  # 0.5 points worse, 50 vs 0
    policy = GatePolicy.resolve(TaskType.CLASSIFICATION, metrics=[MetricGate("accuracy", 0.01)])
    result = judge([PairedSet("", candidate, baseline)], policy)
    accuracy = overall(result, "accuracy")
    assert accuracy.p_value < 1e-6  # certainly worse, but by less than tolerated
    assert -0.01 < accuracy.delta_ci_lower < accuracy.delta_ci_upper < 0
    assert accuracy.outcome is ComparisonOutcome.WITHIN_TOLERANCE
    assert result.verdict is Verdict.PASSED


def test_a_drop_exactly_at_the_tolerance_is_neither_regressed_nor_passed():
    # 20,000 examples, 300 new mistakes and 100 fixes: exactly one point worse, tolerance one
    # point. The old rule ("drop > tolerance and p(no change) < alpha") flagged such a drop
    # about half the time; it is neither shown beyond nor within the tolerance.
    n = 20_000
    base_wrong = set(range(4000))
    cand_wrong = (base_wrong - set(range(100))) | set(range(4000, 4300))
    result = judge(
        [
            PairedSet(
                "",
                classification(correctness(n, cand_wrong)),
                classification(correctness(n, base_wrong)),
            )
        ],
        GatePolicy.resolve(TaskType.CLASSIFICATION, metrics=[MetricGate("accuracy", 0.01)]),
    )
    accuracy = overall(result, "accuracy")
    assert accuracy.delta == pytest.approx(-0.01)
    assert accuracy.p_value < 1e-20
    assert accuracy.delta_ci_lower < -0.01 < accuracy.delta_ci_upper
    assert accuracy.outcome is ComparisonOutcome.INSUFFICIENT_DATA
    assert result.verdict is Verdict.INSUFFICIENT_DATA


def test_a_tiny_set_cannot_pass_even_without_a_single_change():
    n = 60  # above the minimum of 50, far too few for a tolerance of one point
    same = correctness(n, set(range(12)))
    result = judge([PairedSet("", classification(same), classification(same))], POLICY)
    accuracy = overall(result, "accuracy")
    assert accuracy.delta == 0.0
    assert accuracy.p_value == 1.0
    # no disagreement among 60 examples does not prove that none exists
    assert accuracy.delta_ci_lower < -0.01
    assert accuracy.outcome is ComparisonOutcome.INSUFFICIENT_DATA
    assert accuracy.minimum_detectable_drop > 0.04
    assert result.verdict is Verdict.INSUFFICIENT_DATA


def test_a_regression_hidden_in_one_slice_is_found():
    # 940 "plain" reviews where the candidate fixes 24 mistakes, 60 "negation" reviews where
    # it makes 24 new ones: overall the two cancel out exactly.
    slices = ["plain"] * 940 + ["negation"] * 60
    base_correct = correctness(1000, set(range(100)) | set(range(940, 945)))
    cand_correct = base_correct.copy()
    cand_correct[0:24] = True
    cand_correct[945:969] = False
    baseline = classification(base_correct, slices=slices)
    candidate = classification(cand_correct, slices=slices)
    result = judge([PairedSet("", candidate, baseline)], POLICY)

    assert overall(result, "accuracy").delta == pytest.approx(0.0)
    assert overall(result, "accuracy").outcome is not ComparisonOutcome.REGRESSED
    assert result.verdict is Verdict.REGRESSED
    negation = next(
        c for c in result.regressions if c.metric == "accuracy" and c.slice == "negation"
    )
    assert negation.example_count == 60
    assert negation.delta == pytest.approx(-24 / 60)
    assert negation.adjusted_p_value < 1e-4
    assert 0 < negation.family_weight < PRIMARY_ALPHA_SHARE
    assert result.most_severe is not None
    assert result.most_severe.slice == "negation"
    assert {c.slice for c in result.regressions} == {"negation"}


def test_many_slices_do_not_turn_one_unlucky_slice_into_a_regression():
    # 16 slices of 125; the candidate is as good as the baseline overall, but in one slice 6
    # more mistakes went its way than in the others. Alone, that slice's drop would count as
    # shown beyond the tolerance at alpha; across 2 metrics x 17 comparisons it does not.
    n, size = 2000, 125
    slices = [f"s{i // size:02d}" for i in range(n)]
    base_wrong = {i for i in range(n) if i % 5 == 0}  # 80 % everywhere
    cand_wrong = set(base_wrong)
    for k in range(16):
        first = k * size
        fixes = [i for i in range(first, first + size) if i in base_wrong][:3]
        breaks = [i for i in range(first, first + size) if i not in base_wrong][:3]
        cand_wrong -= set(fixes)
        cand_wrong |= set(breaks)
    unlucky = [i for i in range(0, size) if i not in cand_wrong][:6]
    cand_wrong |= set(unlucky)
    lucky = [i for i in range(size, 4 * size) if i in cand_wrong][:6]
    cand_wrong -= set(lucky)  # overall unchanged
    result = judge(
        [
            PairedSet(
                "",
                classification(correctness(n, cand_wrong), slices=slices),
                classification(correctness(n, base_wrong), slices=slices),
            )
        ],
        POLICY,
    )
    s00 = next(c for c in result.comparisons if c.metric == "accuracy" and c.slice == "s00")
    in_s00 = np.arange(size)
    counts = PairedProportions.of(
        correctness(n, base_wrong)[in_s00], correctness(n, cand_wrong)[in_s00]
    )
    alone = judge_differences([GatedDifference(counts, 0.01, True)], 0.05)[0]
    assert (s00.delta, s00.delta_ci_upper) == pytest.approx((alone.estimate, alone.interval_upper))
    assert alone.outcome is DifferenceOutcome.REGRESSED
    assert s00.delta_ci_upper < -0.01
    assert s00.outcome is ComparisonOutcome.INSUFFICIENT_DATA
    assert "Holm-adjusted" in s00.reason
    assert result.verdict is not Verdict.REGRESSED
    family = [c for c in result.comparisons if c.family_weight > 0]
    assert len(family) == 2 * 17
    assert sum(c.family_weight for c in family) == pytest.approx(1.0)


def test_the_primary_metric_must_pass_and_guardrails_must_only_not_regress():
    base_correct, cand_correct = _retrained(8000, 5, new_mistakes=200, fixes=220)
    sets = [PairedSet("", classification(cand_correct), classification(base_correct))]
    # a guardrail whose tolerance is too tight to be shown within: still a PASS
    policy = GatePolicy.resolve(
        TaskType.CLASSIFICATION,
        metrics=[MetricGate("accuracy", 0.01), MetricGate("loss", 0.0)],
    )
    assert policy.primary_metric == "accuracy"
    result = judge(sets, policy)
    assert overall(result, "accuracy").outcome is ComparisonOutcome.WITHIN_TOLERANCE
    assert overall(result, "loss").outcome is ComparisonOutcome.INSUFFICIENT_DATA
    assert result.verdict is Verdict.PASSED
    # the same gate with the loss as primary: it must prove itself
    swapped = GatePolicy.resolve(
        TaskType.CLASSIFICATION,
        metrics=[MetricGate("accuracy", 0.01), MetricGate("loss", 0.0)],
        primary_metric="loss",
    )
    assert judge(sets, swapped).verdict is Verdict.INSUFFICIENT_DATA
    with pytest.raises(ValueError, match="not gated"):
        GatePolicy.resolve(TaskType.CLASSIFICATION, primary_metric="loss")


def test_only_the_named_slices_are_gated():
    slices = ["plain"] * 940 + ["negation"] * 60
    base_correct = correctness(1000, set(range(100)))
    cand_correct = base_correct.copy()
    cand_correct[0:24] = True
    cand_correct[945:969] = False  # negation regresses, as above
    sets = [
        PairedSet(
            "",
            classification(cand_correct, slices=slices),
            classification(base_correct, slices=slices),
        )
    ]
    plain_only = GatePolicy.resolve(TaskType.CLASSIFICATION, gated_slices=["plain"])
    result = judge(sets, plain_only)
    negation = next(
        c for c in result.comparisons if c.metric == "accuracy" and c.slice == "negation"
    )
    assert negation.outcome is ComparisonOutcome.NOT_GATED
    assert negation.family_weight == 0.0
    assert negation.delta_ci_upper < 0  # still measured and reported
    assert negation.reason == "reported, not gated"
    assert result.verdict is not Verdict.REGRESSED
    assert judge(sets, POLICY).verdict is Verdict.REGRESSED


def test_a_slice_too_small_to_judge_is_reported_but_not_judged():
    slices = ["plain"] * 990 + ["sarcasm"] * 10
    base_correct = correctness(1000, set(range(100)))
    cand_correct = base_correct.copy()
    cand_correct[0:10] = True  # compensates overall
    cand_correct[990:1000] = False  # every sarcastic review wrong now
    result = judge(
        [
            PairedSet(
                "",
                classification(cand_correct, slices=slices),
                classification(base_correct, slices=slices),
            )
        ],
        POLICY,
    )
    sarcasm = next(c for c in result.comparisons if c.metric == "accuracy" and c.slice == "sarcasm")
    assert sarcasm.delta == pytest.approx(-1.0)
    assert sarcasm.outcome is ComparisonOutcome.INSUFFICIENT_DATA
    assert sarcasm.family_weight == 0.0
    assert sarcasm.reason.startswith("too few examples to judge: 10 in the slice")
    assert result.verdict is Verdict.PASSED
    slice_metrics = {(m.metric, m.slice) for m in result.candidate_metrics}
    assert ("accuracy", "sarcasm") in slice_metrics


def test_an_overall_set_too_small_is_insufficient_data_never_a_pass_or_a_regression():
    n = 30  # below the default minimum of 50
    baseline = classification(correctness(n, set()))
    candidate = classification(correctness(n, set(range(15))))
    result = judge([PairedSet("", candidate, baseline)], POLICY)
    assert result.verdict is Verdict.INSUFFICIENT_DATA
    gated = [c for c in result.comparisons if c.metric in ("accuracy", "macro_f1")]
    assert gated
    assert all(c.outcome is ComparisonOutcome.INSUFFICIENT_DATA for c in gated)
    assert all("the gate needs 50" in c.reason for c in gated)


def test_a_better_candidate_passes_with_an_interval_above_zero():
    n = 400
    baseline = classification(correctness(n, set(range(160))))  # 60 %
    candidate = classification(correctness(n, set(range(60))))  # 85 %
    result = judge([PairedSet("", candidate, baseline)], POLICY)
    accuracy = overall(result, "accuracy")
    assert result.verdict is Verdict.PASSED
    assert accuracy.delta == pytest.approx(0.25)
    assert 0 < accuracy.delta_ci_lower < accuracy.delta_ci_upper
    assert not result.regressions


def test_a_candidate_below_the_minimum_absolute_score_regresses_whatever_the_baseline():
    n = 200
    same = correctness(n, set(range(90)))  # 55 % for both
    policy = GatePolicy.resolve(
        TaskType.CLASSIFICATION,
        metrics=[MetricGate("accuracy", 0.01, min_absolute_score=0.6)],
    )
    result = judge([PairedSet("", classification(same), classification(same))], policy)
    accuracy = overall(result, "accuracy")
    assert accuracy.delta == 0.0
    assert accuracy.p_value == 1.0
    assert accuracy.outcome is ComparisonOutcome.REGRESSED
    assert result.verdict is Verdict.REGRESSED


def test_a_loss_regression_on_a_causal_lm_is_found_by_the_bootstrap():
    n = 120
    rng = np.random.default_rng(11)
    tokens = rng.integers(3, 12, size=n)
    base_loss = tokens * rng.uniform(1.0, 1.4, size=n)
    ids = tuple(f"q-{i}" for i in range(n))

    def outcomes(loss_sums: np.ndarray) -> CausalLMOutcomes:
        correct = np.minimum(tokens, (tokens * 0.6).astype(np.int64))
        return CausalLMOutcomes(
            example_ids=ids,
            slices=("",) * n,
            loss_sums=loss_sums,
            token_counts=tokens,
            correct_tokens=correct,
            exact_matches=np.full(n, math.nan),
        )

    baseline = outcomes(base_loss)
    candidate = outcomes(base_loss + tokens * 0.3)  # 0.3 nats per token worse everywhere
    policy = GatePolicy.resolve(TaskType.CAUSAL_LM)
    result = judge([PairedSet("", candidate, baseline)], policy)
    loss = overall(result, "loss")
    assert loss.test is SignificanceTest.PAIRED_BOOTSTRAP
    assert loss.delta == pytest.approx(0.3)
    assert 0 < loss.delta_ci_lower <= loss.delta <= loss.delta_ci_upper
    assert loss.outcome is ComparisonOutcome.REGRESSED
    assert result.verdict is Verdict.REGRESSED
    # nothing was generated, but exact_match is not gated by default: no INSUFFICIENT_DATA
    assert not any(c.metric == "exact_match" for c in result.comparisons)


def test_a_gated_metric_that_could_not_be_computed_is_insufficient_data():
    n = 100
    outcomes = CausalLMOutcomes(
        example_ids=tuple(f"q-{i}" for i in range(n)),
        slices=("",) * n,
        loss_sums=np.full(n, 5.0),
        token_counts=np.full(n, 5),
        correct_tokens=np.full(n, 3),
        exact_matches=np.full(n, math.nan),
    )
    policy = GatePolicy.resolve(TaskType.CAUSAL_LM, metrics=[MetricGate("exact_match", 0.02)])
    result = judge([PairedSet("", outcomes, outcomes)], policy)
    assert result.verdict is Verdict.INSUFFICIENT_DATA
    assert overall(result, "exact_match").outcome is ComparisonOutcome.INSUFFICIENT_DATA


def test_golden_sets_are_gated_too_and_labelled():
    n = 200
    primary = classification(correctness(n, set(range(20))))
    golden_base = classification(correctness(n, set(range(20))), ids=[f"g-{i}" for i in range(n)])
    golden_cand = classification(correctness(n, set(range(80))), ids=[f"g-{i}" for i in range(n)])
    result = judge(
        [PairedSet("", primary, primary), PairedSet("golden-negation", golden_cand, golden_base)],
        POLICY,
    )
    assert result.verdict is Verdict.REGRESSED
    assert {c.evaluation_set for c in result.regressions} == {"golden-negation"}
    assert overall(result, "accuracy").outcome is not ComparisonOutcome.REGRESSED


def test_the_bootstrap_is_seeded():
    n = 300
    rng = np.random.default_rng(5)
    baseline = classification(rng.random(n) < 0.7)
    candidate = classification(rng.random(n) < 0.75)
    first = overall(judge([PairedSet("", candidate, baseline)], POLICY), "loss")
    again = overall(judge([PairedSet("", candidate, baseline)], POLICY), "loss")
    reseeded = overall(
        judge(
            [PairedSet("", candidate, baseline)],
            GatePolicy.resolve(TaskType.CLASSIFICATION, seed=99),
        ),
        "loss",
    )
    assert (first.delta_ci_lower, first.delta_ci_upper, first.p_value) == (
        again.delta_ci_lower,
        again.delta_ci_upper,
        again.p_value,
    )
    assert (first.delta_ci_lower, first.delta_ci_upper) != (
        reseeded.delta_ci_lower,
        reseeded.delta_ci_upper,
    )


def test_baseline_outcomes_are_paired_by_example_id_whatever_their_order():
    n = 100
    baseline = classification(correctness(n, set(range(10))))
    shuffled = baseline.select(np.arange(n)[::-1].copy())
    result = judge([PairedSet("", baseline, shuffled)], POLICY)
    assert overall(result, "accuracy").delta == 0.0
    assert overall(result, "accuracy").p_value == 1.0


def test_outcomes_about_other_examples_are_refused():
    baseline = classification(correctness(100, set()))
    other = classification(correctness(100, set()), ids=[f"x-{i}" for i in range(100)])
    with pytest.raises(ExampleMismatch):
        judge([PairedSet("", other, baseline)], POLICY)
