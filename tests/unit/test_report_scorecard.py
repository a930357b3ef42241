"""The scorecard's pure computation: regression rate and its Wilson interval, mean time to
rollback, the cost trend, and what each checkpoint's row says, on hand-built histories."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tuneline.cli.report import scorecard_json, sparkline
from tuneline.report.scorecard import (
    AliasMove,
    Budget,
    Checkpoint,
    Comparison,
    Cost,
    Estimate,
    Evaluation,
    LossPoint,
    MetricValue,
    ModelHistory,
    Owner,
    TrainingRun,
    budget_text,
    build_scorecard,
    human_duration,
    linear_trend,
    mean_time_to_rollback,
    wilson_interval,
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
MODEL = "models/sentiment"


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# -- statistics -----------------------------------------------------------------------------


def test_wilson_interval_matches_the_textbook_values():
    # Agresti & Coull (1998): 0 of 10 at 95 % is [0, 0.2775]; 1 of 10 is [0.0179, 0.4042]
    zero = wilson_interval(0, 10)
    assert zero is not None
    assert zero.estimate == 0
    assert zero.lower == 0
    assert zero.upper == pytest.approx(0.2775, abs=1e-4)
    one = wilson_interval(1, 10)
    assert one is not None
    assert (one.lower, one.upper) == (
        pytest.approx(0.0179, abs=1e-4),
        pytest.approx(0.4042, abs=1e-4),
    )
    every = wilson_interval(10, 10)
    assert every is not None
    assert every.upper == 1
    assert every.lower == pytest.approx(0.7225, abs=1e-4)


def test_wilson_interval_is_none_without_trials_and_refuses_impossible_counts():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError, match=r"successes must be in \[0, 2\]"):
        wilson_interval(3, 2)


def test_linear_trend_is_the_least_squares_slope_per_run():
    trend = linear_trend([1.0, 2.0, 3.5])
    assert trend is not None
    assert trend.slope == pytest.approx(1.25)
    assert (trend.first, trend.last, trend.mean) == (1.0, 3.5, pytest.approx(6.5 / 3))
    single = linear_trend([2.0])
    assert single is not None
    assert single.slope == 0
    assert linear_trend([]) is None


def test_mean_time_to_rollback_spans_trigger_to_move_and_skips_untimed_moves():
    moves = [
        AliasMove("production", 3, "b", "a", "ROLLBACK_ALERT", _at(10), trigger_time=_at(9)),
        AliasMove(
            "production", 5, "d", "c", "ROLLBACK_REGRESSION", _at(30), trigger_time=_at(29.5)
        ),
        AliasMove("production", 6, "c", "a", "ROLLBACK_MANUAL", _at(40)),
    ]
    assert mean_time_to_rollback(moves) == pytest.approx((60 + 30) / 2)
    assert mean_time_to_rollback([]) is None


def test_sparklines_and_durations_read_at_a_glance():
    assert sparkline([1, 2, 3]) == "▁▅█"
    assert sparkline([2, None, 2]) == "▁ ▁"
    assert sparkline([]) == ""
    assert human_duration(None) == "—"
    assert human_duration(4.25) == "4.2s"
    assert human_duration(95) == "1m35s"
    assert human_duration(2 * 86400 + 3600 * 3 + 60 * 5) == "51h05m"


# -- the scorecard --------------------------------------------------------------------------


def _comparison(candidate: float, baseline: float, outcome: str) -> Comparison:
    delta = candidate - baseline
    return Comparison(
        "accuracy",
        "",
        "",
        baseline,
        candidate,
        delta,
        delta - 0.03,
        delta + 0.03,
        0.9,
        200,
        outcome,
    )


def _evaluation(name: str, verdict: str, minutes: float, candidate: float) -> Evaluation:
    return Evaluation(
        name=f"evaluations/{name}",
        verdict=verdict,
        complete_time=_at(minutes),
        metrics=(
            MetricValue("accuracy", "", "", candidate, 200),
            MetricValue("accuracy", "negation", "", candidate - 0.1, 40),
            MetricValue("macro_f1", "negation", "", 0.5, 40),
        ),
        comparisons=(
            _comparison(
                candidate, 0.8, "REGRESSED" if verdict == "REGRESSED" else "WITHIN_TOLERANCE"
            ),
            Comparison(
                "accuracy", "negation", "", 0.7, candidate - 0.1, 0, 0, 0, 0.9, 40, "NOT_GATED"
            ),
        ),
        start_time=_at(minutes - 2),
        end_time=_at(minutes),
    )


def _checkpoint(
    job: str, minutes: float, *evaluations: Evaluation, version: str = "v1"
) -> Checkpoint:
    return Checkpoint(
        name=f"{MODEL}/checkpoints/{job}.step-10",
        training_job=f"trainingJobs/{job}",
        step=10,
        dataset_version=f"datasets/reviews/versions/{version}",
        create_time=_at(minutes),
        cost=Cost(device_seconds=30.0, amount=0.05, currency="USD"),
        evaluations=evaluations,
    )


def _run(job: str, minutes: float, amount: float) -> TrainingRun:
    return TrainingRun(
        name=f"trainingJobs/{job}",
        state="SUCCEEDED",
        loss_curve=(LossPoint(5, 0.9, None), LossPoint(10, 0.6, 0.65)),
        cost=Cost(device_seconds=amount * 600, amount=amount, currency="USD", tokens=1000),
        create_time=_at(minutes - 5),
        start_time=_at(minutes - 4),
    )


def _history() -> ModelHistory:
    a = _checkpoint("a", 10, _evaluation("a", "PASSED", 12, 0.82))
    b = _checkpoint("b", 20, _evaluation("b", "PASSED", 22, 0.85), version="v2")
    # c regressed offline; d passed first, then a re-evaluation found a regression
    c = _checkpoint("c", 30, _evaluation("c", "REGRESSED", 32, 0.70))
    d = _checkpoint(
        "d",
        40,
        _evaluation("d1", "PASSED", 42, 0.86),
        _evaluation("d2", "REGRESSED", 50, 0.80),
    )
    failed = _checkpoint("e", 45, _evaluation("e", "FAILED", 46, 0.0))
    name = {job: f"{MODEL}/checkpoints/{job}.step-10" for job in "abcd"}
    moves = (
        AliasMove("production", 1, "", name["a"], "PROMOTION", _at(12.5), _at(12)),
        AliasMove("production", 2, name["a"], name["b"], "PROMOTION", _at(22.5), _at(22)),
        AliasMove("production", 3, name["b"], name["d"], "PROMOTION", _at(42.5), _at(42)),
        AliasMove(
            "production", 4, name["d"], name["b"], "ROLLBACK_REGRESSION", _at(50.25), _at(50)
        ),
        AliasMove("candidate", 1, "", name["c"], "PROMOTION", _at(33), _at(32)),
    )
    return ModelHistory(
        model=MODEL,
        primary_metric="accuracy",
        checkpoints=(a, b, c, d, failed),
        runs={
            r.name: r
            for r in (
                _run("a", 10, 0.05),
                _run("b", 20, 0.06),
                _run("c", 30, 0.08),
                _run("d", 40, 0.09),
                _run("e", 45, 0.02),
            )
        },
        moves=moves,
        dataset_push_times={
            "datasets/reviews/versions/v1": _at(0),
            "datasets/reviews/versions/v2": _at(15),
        },
    )


def test_the_window_counts_regressions_per_checkpoint_by_its_latest_decided_verdict():
    card = build_scorecard(_history(), start=_at(0), end=_at(60))
    window = card.window
    # a, b passed; c regressed; d's latest verdict regressed; e's evaluation broke (not counted)
    assert (window.evaluated, window.regressed) == (4, 2)
    assert window.regression_rate == wilson_interval(2, 4)
    assert [(p.evaluated, p.regressed) for p in card.regression_history] == [
        (1, 0),
        (2, 0),
        (3, 1),
        (4, 2),
    ]
    assert window.rollbacks == 1
    assert window.mean_time_to_rollback_seconds == pytest.approx(15.0)
    assert window.runs == 5
    assert window.cost_per_run == linear_trend([0.05, 0.06, 0.08, 0.09, 0.02])


def test_a_window_that_ends_earlier_sees_only_what_had_happened_by_then():
    card = build_scorecard(_history(), start=_at(0), end=_at(44))
    # e (minute 45), d's regression (minute 50) and the rollback are outside the window
    assert (card.window.evaluated, card.window.regressed) == (4, 1)
    assert card.window.rollbacks == 0
    assert card.window.mean_time_to_rollback_seconds is None
    assert [c.checkpoint.rsplit("/", 1)[-1] for c in card.checkpoints] == [
        "a.step-10",
        "b.step-10",
        "c.step-10",
        "d.step-10",
    ]


def test_each_checkpoint_row_joins_lineage_verdict_interval_loss_cost_and_promotion():
    card = build_scorecard(_history(), start=_at(0), end=_at(60))
    rows = {c.training_job.rsplit("/", 1)[-1]: c for c in card.checkpoints}
    b, d = rows["b"], rows["d"]
    assert b.verdict == "PASSED"
    assert b.dataset_version.endswith("/v2")
    assert b.gated is not None
    assert (b.gated.candidate, b.gated.baseline) == (0.85, 0.8)
    assert (b.gated.delta_lower, b.gated.delta_upper) == (
        pytest.approx(0.02),
        pytest.approx(0.08),
    )
    assert [(s.slice, s.value) for s in b.slices] == [("negation", pytest.approx(0.75))]
    assert b.loss_curve == _run("b", 20, 0.06).loss_curve
    assert b.training_cost.device_seconds == 30.0
    assert b.evaluation_seconds == 120.0
    assert b.promoted_time == _at(22.5)
    assert b.rolled_back_time is None
    assert b.data_to_production_seconds == pytest.approx(7.5 * 60)  # v2 pushed at minute 15
    assert d.verdict == "REGRESSED"
    assert d.evaluation == "evaluations/d2"
    assert d.promoted_time == _at(42.5)
    assert d.rolled_back_time == _at(50.25)
    assert rows["c"].promoted_time is None  # moved `candidate`, never production
    assert rows["e"].verdict == "FAILED"
    assert rows["e"].data_to_production_seconds is None


def test_the_json_form_is_plain_values():
    card = build_scorecard(_history(), start=_at(0), end=_at(60))
    payload = scorecard_json(card)
    assert payload["window"]["regressed"] == 2
    assert payload["window"]["start"] == _at(0).isoformat()
    assert payload["checkpoints"][0]["gated"]["candidate"] == 0.82
    assert not math.isnan(payload["window"]["regression_rate"]["upper"])


def test_each_run_shows_its_estimate_beside_the_actual_and_the_estimates_error():
    history = _history()
    runs = dict(history.runs)
    # a: estimated 0.06 for an actual 0.05 (+20 %); b: 0.045 for 0.06 (-25 %)
    runs["trainingJobs/a"] = replace(
        runs["trainingJobs/a"], estimate=Estimate(1200, 36.0, 0.06, "USD")
    )
    runs["trainingJobs/b"] = replace(
        runs["trainingJobs/b"], estimate=Estimate(900, 27.0, 0.045, "USD")
    )
    # c stopped at its budget: a SUCCEEDED run, its shortfall is the estimate's error too
    runs["trainingJobs/c"] = replace(
        runs["trainingJobs/c"],
        estimate=Estimate(1000, 24.0, 0.04, "USD"),
        stop_reason="BUDGET_EXHAUSTED",
    )
    # d failed: an early stop is not the estimate's error
    runs["trainingJobs/d"] = replace(
        runs["trainingJobs/d"], state="FAILED", estimate=Estimate(1000, 10.0, 0.01, "USD")
    )
    card = build_scorecard(replace(history, runs=runs), start=_at(0), end=_at(60))
    by_run = {r.run.rsplit("/", 1)[-1]: r for r in card.runs}
    a = by_run["a"].estimate_error
    assert a is not None
    assert a.cost == pytest.approx(0.2)
    assert a.tokens == pytest.approx(0.2)  # 1200 estimated, 1000 processed
    assert a.device_seconds == pytest.approx(36.0 / 30.0 - 1)
    assert by_run["b"].estimate_error.cost == pytest.approx(-0.25)
    assert by_run["c"].estimate_error.cost == pytest.approx(0.04 / 0.08 - 1)
    assert by_run["c"].stop_reason == "BUDGET_EXHAUSTED"
    assert by_run["d"].estimate_error is None
    assert by_run["e"].estimate is None
    assert by_run["e"].estimate_error is None
    assert card.window.mean_absolute_estimate_error == pytest.approx((0.2 + 0.25 + 0.5) / 3)


def test_a_run_cut_short_is_compared_with_its_estimate_prorated_to_the_steps_it_ran():
    history = _history()
    runs = dict(history.runs)
    # a: 60 steps estimated at 60 s (15 s of it fixed) and USD 0.06; early stopping at step 40.
    # Prorated: 15 + 45 x 40/60 = 45 s, USD 0.06 x 45/60 = 0.045, 1200 x 40/60 = 800 tokens
    # against the actual 30 s, USD 0.05, 1000 tokens.
    estimate = Estimate(1200, 60.0, 0.06, "USD", planned_steps=60, fixed_device_seconds=15.0)
    runs["trainingJobs/a"] = replace(
        runs["trainingJobs/a"],
        estimate=estimate,
        steps_completed=40,
        stop_reason="EARLY_STOPPING",
    )
    # b ran all its planned steps: compared as estimated
    runs["trainingJobs/b"] = replace(
        runs["trainingJobs/b"],
        estimate=Estimate(900, 27.0, 0.045, "USD", planned_steps=30, fixed_device_seconds=5.0),
        steps_completed=30,
    )
    card = build_scorecard(replace(history, runs=runs), start=_at(0), end=_at(60))
    by_run = {r.run.rsplit("/", 1)[-1]: r for r in card.runs}
    a = by_run["a"].estimate_error
    assert a is not None
    assert a.prorated_steps == (40, 60)
    assert a.device_seconds == pytest.approx(45.0 / 30.0 - 1)
    assert a.cost == pytest.approx(0.045 / 0.05 - 1)
    assert a.tokens == pytest.approx(800 / 1000 - 1)
    assert by_run["a"].estimate == estimate  # the table still shows what was estimated
    b = by_run["b"].estimate_error
    assert b.prorated_steps is None
    assert b.cost == pytest.approx(0.045 / 0.06 - 1)
    assert card.window.mean_absolute_estimate_error == pytest.approx((0.1 + 0.25) / 2)


def test_the_scorecard_names_the_owner_runbook_and_budget():
    history = replace(
        _history(),
        owner=Owner("support-ml", "#support-ml", "https://runbooks.example.com/sentiment"),
        budget=Budget(per_run=5.0, per_month=100.0, currency="USD"),
    )
    card = build_scorecard(history, start=_at(0), end=_at(60))
    assert card.owner.team == "support-ml"
    assert card.owner.runbook_uri == "https://runbooks.example.com/sentiment"
    assert budget_text(card.budget) == "USD 5.00 per run, USD 100.00 per month"
    assert budget_text(Budget()) == "none"
    assert scorecard_json(card)["owner"]["contact"] == "#support-ml"
