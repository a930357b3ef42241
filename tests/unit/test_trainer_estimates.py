"""The trainer's estimate of a job before it runs: tokens from the data, device time from the
throughput earlier runs measured, cost at the configured price (pure domain functions)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.trainer.domain.config import Hyperparameters
from services.trainer.domain.estimates import (
    ThroughputSample,
    estimate_training,
    evaluations_planned,
    examples_processed,
)


def _estimate(samples: list[ThroughputSample], **options: float):
    return estimate_training(
        train_examples=100,
        train_tokens=4000,
        total_steps=10,
        hp=Hyperparameters(batch_size=8),
        samples=samples,
        default_tokens_per_device_second=20.0,
        price_per_device_hour=Decimal("3.60"),
        currency="EUR",
        **options,  # type: ignore[arg-type]
    )


def _run(train: int, validation: int, fixed: float, rate: float) -> ThroughputSample:
    """A CPU run that took ``fixed`` seconds outside its loop plus its work (validation at a
    third) at ``rate`` tokens a second."""
    loop = (train + validation / 3) / rate
    return ThroughputSample(
        train,
        device_seconds=fixed + loop,
        training_seconds=loop,
        device_type="cpu",
        validation_tokens=validation,
    )


def test_examples_processed_counts_every_pass_and_the_short_last_step():
    hp = Hyperparameters(batch_size=8)
    assert examples_processed(100, 10, hp) == 80  # within the first epoch
    assert examples_processed(100, 13, hp) == 100  # an epoch: 12 steps of 8, then 4 rows
    assert examples_processed(100, 30, hp) == 2 * 100 + 4 * 8
    accumulated = Hyperparameters(batch_size=4, gradient_accumulation_steps=4)
    assert examples_processed(100, 3, accumulated) == 48


def test_without_earlier_runs_the_conservative_default_prices_the_tokens():
    estimate = _estimate([])
    assert estimate.estimated_tokens == 3200  # 80 rows of 40 tokens
    assert (estimate.measured_runs, estimate.device_type) == (0, "")
    assert estimate.tokens_per_device_second == 20.0
    assert estimate.cost.device_seconds == 160.0
    assert estimate.cost.amount == Decimal("0.160000000")
    assert estimate.cost.currency == "EUR"


def test_the_newest_device_types_runs_measure_the_rate_and_the_fixed_time():
    samples = [
        ThroughputSample(
            10_000, device_seconds=10.0, training_seconds=8.0, device_type="cuda:H100"
        ),
        ThroughputSample(300, device_seconds=6.0, training_seconds=3.0, device_type="cpu"),
        ThroughputSample(0, device_seconds=5.0, training_seconds=5.0, device_type="cpu"),  # no data
        ThroughputSample(500, device_seconds=3.0, training_seconds=2.0, device_type="cpu"),
    ]
    estimate = _estimate(samples)
    assert (estimate.measured_runs, estimate.device_type) == (2, "cpu")
    assert estimate.tokens_per_device_second == pytest.approx(800 / 5.0)  # over loop time
    assert estimate.overhead_device_seconds == pytest.approx(1.0)  # the newest: 3 - 2
    assert estimate.cost.device_seconds == pytest.approx(1.0 + 3200 / 160.0)
    assert estimate.cost.device_type == "cpu"


def test_without_earlier_runs_the_configured_fixed_time_is_added():
    assert _estimate([]).overhead_device_seconds == 0.0
    estimate = _estimate([], default_overhead_device_seconds=30.0)
    assert estimate.overhead_device_seconds == 30.0
    assert estimate.cost.device_seconds == 30.0 + 3200 / 20.0


def test_evaluations_are_planned_at_every_interval_and_at_the_last_step():
    assert evaluations_planned(30, 13) == 3  # steps 13, 26 and 30
    assert evaluations_planned(26, 13) == 2
    assert evaluations_planned(10, 25) == 1  # only the last step
    assert evaluations_planned(0, 5) == 0


def test_the_loops_give_the_rate_and_the_newest_run_the_fixed_time_not_a_cold_first_one():
    # the first run started cold (60 s outside its loop), the later ones warm (5 s); all
    # trained at 100 tokens a second, validation at a third
    samples = [
        _run(1000, 300, fixed=60.0, rate=100.0),
        _run(4000, 600, fixed=5.0, rate=100.0),
        _run(2000, 0, fixed=5.0, rate=100.0),
    ]
    estimate = _estimate(samples, validation_examples=25, eval_every_n_steps=4)
    assert estimate.measured_runs == 3
    assert estimate.overhead_device_seconds == pytest.approx(5.0)
    assert estimate.tokens_per_device_second == pytest.approx(100.0)
    # 80 rows of 40 tokens; validated at steps 4, 8 and 10: 3 x 25 rows of 40 tokens, at a third
    assert (estimate.estimated_tokens, estimate.estimated_validation_tokens) == (3200, 3000)
    assert estimate.cost.device_seconds == pytest.approx(5.0 + (3200 + 3000 / 3) / 100.0)
    assert estimate.cost.amount == Decimal("0.047000000")  # 47 s at EUR 3.60 an hour


def test_a_resumed_run_is_left_out_while_runs_made_in_one_attempt_measure():
    clean = [_run(1000, 0, fixed=10.0, rate=50.0), _run(3000, 0, fixed=10.0, rate=50.0)]
    resumed = ThroughputSample(
        2000, device_seconds=400.0, training_seconds=60.0, device_type="cpu", attempts=2
    )
    estimate = _estimate([clean[0], clean[1], resumed])
    assert estimate.measured_runs == 2
    assert estimate.overhead_device_seconds == pytest.approx(10.0)
    assert estimate.tokens_per_device_second == pytest.approx(50.0)
    only_resumed = _estimate([resumed])  # better than the default: it measured this machine
    assert only_resumed.measured_runs == 1
    assert only_resumed.tokens_per_device_second == pytest.approx(2000 / 60.0)
    assert only_resumed.overhead_device_seconds == pytest.approx(340.0)


def test_one_run_gives_its_loop_rate_and_its_time_outside_the_loop():
    (sample,) = [
        ThroughputSample(
            1000,
            device_seconds=50.0,
            training_seconds=30.0,
            device_type="cpu",
            validation_tokens=600,
        )
    ]
    estimate = _estimate([sample])
    assert estimate.overhead_device_seconds == pytest.approx(20.0)
    assert estimate.tokens_per_device_second == pytest.approx((1000 + 600 / 3) / 30.0)
    assert estimate.cost.device_seconds == pytest.approx(20.0 + 3200 / 40.0)
