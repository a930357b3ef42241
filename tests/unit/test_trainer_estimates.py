"""The trainer's estimate of a job before it runs: tokens from the data, device time from the
throughput earlier runs measured, cost at the configured price (pure domain functions)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.trainer.domain import (
    Hyperparameters,
    ThroughputSample,
    estimate_training,
    examples_processed,
)


def _estimate(samples: list[ThroughputSample], **hp: int):
    return estimate_training(
        train_examples=100,
        train_tokens=4000,
        total_steps=10,
        hp=Hyperparameters(batch_size=8, **hp),  # type: ignore[arg-type]
        samples=samples,
        default_tokens_per_device_second=20.0,
        price_per_device_hour=Decimal("3.60"),
        currency="EUR",
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


def test_the_newest_device_types_runs_give_the_loop_throughput_and_the_fixed_time():
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
    assert estimate.overhead_device_seconds == pytest.approx(2.0)  # median of 3 and 1
    assert estimate.cost.device_seconds == pytest.approx(2.0 + 3200 / 160.0)
    assert estimate.cost.device_type == "cpu"


def test_without_earlier_runs_there_is_no_fixed_time():
    assert _estimate([]).overhead_device_seconds == 0.0
