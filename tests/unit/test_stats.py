"""The shared decision statistics on known cases and by simulation (seeded, a few seconds)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from shared.stats.decision import DifferenceOutcome, GatedDifference, judge_differences
from shared.stats.multiple import weighted_holm
from shared.stats.paired import NormalDifference, PairedProportions
from shared.stats.sequential import ConfidenceBounds, bernoulli_confidence_sequence

# -- paired differences -----------------------------------------------------------------------


def test_the_score_statistic_at_zero_is_mcnemars():
    counts = PairedProportions(worse=14, better=4, n=300)
    assert counts.estimate == pytest.approx(-10 / 300)
    assert counts.z(0.0) == pytest.approx((4 - 14) / math.sqrt(18))
    assert counts.standard_error == pytest.approx(math.sqrt(18) / 300)
    assert counts.two_sided_p_value() == pytest.approx(math.erfc(10 / math.sqrt(18) / math.sqrt(2)))


def test_the_score_statistic_falls_as_the_margin_grows():
    for worse, better, n in [(0, 0, 50), (5, 3, 200), (60, 0, 2000), (40, 40, 100)]:
        counts = PairedProportions(worse, better, n)
        values = [counts.z(m) for m in np.linspace(-0.99, 0.99, 397)]
        assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values))


def test_no_disagreement_is_not_proof_of_no_difference():
    lower, upper = PairedProportions(worse=0, better=0, n=100).interval(0.90)
    assert lower == pytest.approx(-upper)
    assert 0.02 < upper < 0.04  # about the rule of three's 3/100, two-sided at 90 %


def test_interval_and_one_sided_tests_agree():
    counts = PairedProportions(worse=30, better=12, n=800)
    lower, upper = counts.interval(0.90)
    assert lower < counts.estimate < upper
    assert counts.p_value_above(lower) == pytest.approx(0.05, abs=1e-6)
    assert counts.p_value_below(upper) == pytest.approx(0.05, abs=1e-6)
    assert counts.p_value_above(lower - 0.001) < 0.05 < counts.p_value_above(lower + 0.001)


def test_the_score_interval_covers_as_promised():
    rng = np.random.default_rng(0)
    for n, p_worse, p_better in [(100, 0.03, 0.01), (500, 0.05, 0.03), (125, 0.04, 0.04)]:
        draws = rng.multinomial(n, [p_worse, p_better, 1 - p_worse - p_better], size=1500)
        truth = p_better - p_worse
        covered = [
            lo <= truth <= hi
            for lo, hi in (PairedProportions(int(w), int(b), n).interval(0.90) for w, b, _ in draws)
        ]
        assert np.mean(covered) == pytest.approx(0.90, abs=0.03)


def test_a_normal_difference_takes_its_error_from_the_bootstrap():
    resampled = np.array([0.1, 0.3, math.nan, 0.2, 0.2])
    difference = NormalDifference.from_bootstrap(0.2, resampled)
    assert difference.standard_error == pytest.approx(np.std([0.1, 0.3, 0.2, 0.2], ddof=1))
    lower, upper = difference.interval(0.90)
    assert (lower + upper) / 2 == pytest.approx(0.2)
    assert upper - lower == pytest.approx(2 * 1.6448536 * difference.standard_error)
    assert NormalDifference(0.0, 0.0).two_sided_p_value() == 1.0
    with pytest.raises(ValueError, match="at least two"):
        NormalDifference.from_bootstrap(0.2, [math.nan, 0.1])


# -- Holm -------------------------------------------------------------------------------------


def test_holm_adjusts_by_the_remaining_weight():
    result = weighted_holm([0.01, 0.04, 0.03, 0.005], None, 0.05)
    assert result.adjusted_p_values == pytest.approx((0.03, 0.06, 0.06, 0.02))
    assert result.rejected == (True, False, False, True)
    # the primary hypothesis carries most of alpha: tested first at 0.05 * 0.8
    weighted = weighted_holm([0.035, 0.001, 0.2], [0.8, 0.1, 0.1], 0.05)
    assert weighted.adjusted_p_values == pytest.approx((0.035 * 0.9 / 0.8, 0.01, 0.2))
    assert weighted.rejected == (True, True, False)


def test_holm_keeps_the_family_wise_error_at_alpha():
    rng = np.random.default_rng(1)
    p_values = rng.random((4000, 34))
    any_rejected = [any(weighted_holm(list(row), None, 0.05).rejected) for row in p_values]
    assert np.mean(any_rejected) <= 0.05 + 0.01
    assert np.mean((p_values <= 0.05).any(axis=1)) > 0.8  # what testing each at alpha does


# -- the rule ---------------------------------------------------------------------------------


def test_a_true_drop_exactly_at_the_tolerance_is_rarely_called_either_way():
    rng = np.random.default_rng(2)
    n = 4000
    draws = rng.multinomial(n, [0.04, 0.03, 0.93], size=1500)  # delta = -0.01 exactly
    outcomes = [
        judge_differences(
            [GatedDifference(PairedProportions(int(w), int(b), n), 0.01, True)], 0.05
        )[0].outcome
        for w, b, _ in draws
    ]
    regressed = np.mean([o is DifferenceOutcome.REGRESSED for o in outcomes])
    passed = np.mean([o is DifferenceOutcome.WITHIN_TOLERANCE for o in outcomes])
    assert regressed <= 0.05 + 0.015
    assert passed <= 0.05 + 0.015


def test_the_rule_judges_lower_is_better_metrics_the_other_way_round():
    loss_up = GatedDifference(NormalDifference(0.3, 0.05), tolerance=0.05, higher_is_better=False)
    loss_down = GatedDifference(NormalDifference(-0.1, 0.02), 0.05, higher_is_better=False)
    rise, fall = judge_differences([loss_up, loss_down], 0.05)
    assert rise.outcome is DifferenceOutcome.REGRESSED
    assert "above +0.0500" in rise.reason
    assert fall.outcome is DifferenceOutcome.WITHIN_TOLERANCE
    assert "below +0.0500" in fall.reason
    assert rise.weight == fall.weight == 0.5


def test_the_minimum_detectable_drop_is_caught_with_the_stated_power():
    rng = np.random.default_rng(3)
    n = 2000
    planned = GatedDifference(PairedProportions(worse=60, better=60, n=n), 0.01, True)
    mde = planned.minimum_detectable_drop(0.05)
    assert 0.02 < mde < 0.04
    # a true drop of that size, on top of the same two-way disagreement, is caught ~80 %
    draws = rng.multinomial(n, [0.03 + mde, 0.03, 0.94 - mde], size=1500)
    caught = np.mean(
        [
            judge_differences(
                [GatedDifference(PairedProportions(int(w), int(b), n), 0.01, True)], 0.05
            )[0].outcome
            is DifferenceOutcome.REGRESSED
            for w, b, _ in draws
        ]
    )
    assert caught == pytest.approx(0.80, abs=0.05)


# -- the confidence sequence --------------------------------------------------------------------


def test_the_confidence_sequence_brackets_the_rate_and_narrows():
    early = bernoulli_confidence_sequence(70, 100, 0.01)
    late = bernoulli_confidence_sequence(7000, 10_000, 0.01)
    assert early.lower < 0.7 < early.upper
    assert late.lower < 0.7 < late.upper
    assert late.upper - late.lower < (early.upper - early.lower) / 5
    assert bernoulli_confidence_sequence(0, 0, 0.01) == ConfidenceBounds(0.0, 1.0, 0.01)
    none_right = bernoulli_confidence_sequence(0, 20, 0.01)
    assert none_right.lower == 0.0
    assert 0 < none_right.upper < 0.5


def test_the_confidence_sequence_holds_at_every_look():
    rng = np.random.default_rng(4)
    alpha, rate, looks = 0.05, 0.8, range(20, 2001, 20)
    outcomes = rng.random((300, 2000)) < rate
    successes = np.cumsum(outcomes, axis=1)
    ever_missed = 0
    for row in successes:
        for trials in looks:
            bounds = bernoulli_confidence_sequence(int(row[trials - 1]), trials, alpha)
            if not bounds.lower <= rate <= bounds.upper:
                ever_missed += 1
                break
    assert ever_missed / len(successes) <= alpha
