"""The regression gate on constructed cases: what must trigger, and what must not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.evaluator.domain.gate import (
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
    TaskType,
    point_values,
)
from services.evaluator.domain.statistics import (
    binomial_two_sided_p_value,
    mcnemar_p_value,
    resample_weights,
)

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


# -- the statistics ---------------------------------------------------------------------------


def test_exact_binomial_p_values_match_hand_computed_tails():
    # 0 of 5: P(X <= 0) = 1/32, doubled
    assert binomial_two_sided_p_value(0, 5) == pytest.approx(2 / 32)
    # 1 of 10: P(X <= 1) = 11/1024, doubled
    assert binomial_two_sided_p_value(1, 10) == pytest.approx(22 / 1024)
    assert binomial_two_sided_p_value(5, 10) == 1.0
    assert binomial_two_sided_p_value(0, 0) == 1.0
    assert binomial_two_sided_p_value(7, 10) == binomial_two_sided_p_value(3, 10)


def test_normal_approximation_takes_over_for_many_discordant_pairs_and_agrees():
    exact = binomial_two_sided_p_value(4_900, 10_000)
    approximated = binomial_two_sided_p_value(4_900 * 2, 20_000)  # above the exact limit
    assert exact == pytest.approx(0.0466, abs=0.002)
    # twice the pairs at the same share is far more significant; both are valid p-values
    assert 0 < approximated < exact


def test_mcnemar_uses_only_discordant_pairs():
    base = np.array([True] * 50 + [False] * 50)
    cand = base.copy()
    assert mcnemar_p_value(base, cand) == 1.0
    cand[:6] = False  # six the baseline got right, the candidate wrong
    assert mcnemar_p_value(base, cand) == pytest.approx(2 / 64)


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


def test_a_clear_regression_is_detected_with_its_interval_and_p_value():
    n = 400
    baseline = classification(correctness(n, set(range(0, 60))))  # 85 %
    candidate = classification(correctness(n, set(range(0, 120))))  # 70 %
    result = judge([PairedSet("", candidate, baseline)], POLICY)

    assert result.verdict is Verdict.REGRESSED
    accuracy = overall(result, "accuracy")
    assert accuracy.outcome is ComparisonOutcome.REGRESSED
    assert accuracy.test is SignificanceTest.MCNEMAR
    assert accuracy.delta == pytest.approx(-0.15)
    assert accuracy.delta_ci_lower < accuracy.delta < accuracy.delta_ci_upper < 0
    assert accuracy.p_value < 1e-10
    assert accuracy.example_count == n
    assert result.most_severe is not None
    assert result.most_severe.slice == ""
    loss = overall(result, "loss")
    assert loss.test is SignificanceTest.PAIRED_BOOTSTRAP
    assert loss.outcome is ComparisonOutcome.NOT_GATED  # reported, not gated by default
    assert loss.delta > 0
    assert not loss.higher_is_better


def test_noise_does_not_trigger():
    n = 400
    rng = np.random.default_rng(3)
    base_correct = rng.random(n) < 0.8
    # a retrained model disagrees on a few examples either way: 14 new mistakes, 11 fixes
    cand_correct = base_correct.copy()
    cand_correct[rng.choice(np.flatnonzero(base_correct), size=14, replace=False)] = False
    cand_correct[rng.choice(np.flatnonzero(~base_correct), size=11, replace=False)] = True
    baseline = classification(base_correct)
    candidate = classification(cand_correct)
    result = judge([PairedSet("", candidate, baseline)], POLICY)

    accuracy = overall(result, "accuracy")
    assert result.verdict is Verdict.PASSED
    assert accuracy.outcome is ComparisonOutcome.WITHIN_TOLERANCE
    assert accuracy.p_value > 0.05
    assert accuracy.delta_ci_lower < 0 < accuracy.delta_ci_upper


def test_a_drop_beyond_tolerance_that_is_not_significant_does_not_trigger():
    n = 200
    baseline = classification(correctness(n, set(range(40))))
    candidate = classification(correctness(n, set(range(44))))  # 2 points worse: 4 vs 0 pairs
    result = judge([PairedSet("", candidate, baseline)], POLICY)
    accuracy = overall(result, "accuracy")
    assert accuracy.drop > POLICY.gate_for("accuracy").tolerance  # type: ignore[union-attr]
    assert accuracy.p_value == pytest.approx(2 / 16)
    assert result.verdict is Verdict.PASSED


def test_a_significant_drop_within_tolerance_does_not_trigger():
    n = 5000
    baseline = classification(correctness(n, set(range(500))))
    candidate = classification(correctness(n, set(range(540))))  # 0.8 points worse, 40 vs 0
    policy = GatePolicy.resolve(TaskType.CLASSIFICATION, metrics=[MetricGate("accuracy", 0.01)])
    result = judge([PairedSet("", candidate, baseline)], policy)
    accuracy = overall(result, "accuracy")
    assert accuracy.p_value < 1e-6
    assert accuracy.outcome is ComparisonOutcome.WITHIN_TOLERANCE
    assert result.verdict is Verdict.PASSED


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
    assert overall(result, "accuracy").outcome is ComparisonOutcome.WITHIN_TOLERANCE
    assert result.verdict is Verdict.REGRESSED
    negation = next(
        c for c in result.regressions if c.metric == "accuracy" and c.slice == "negation"
    )
    assert negation.example_count == 60
    assert negation.delta == pytest.approx(-24 / 60)
    assert negation.p_value < 1e-6
    assert result.most_severe is not None
    assert result.most_severe.slice == "negation"
    assert {c.slice for c in result.regressions} == {"negation"}


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
    assert overall(result, "accuracy").outcome is ComparisonOutcome.WITHIN_TOLERANCE


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
