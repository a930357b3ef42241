"""What a job is expected to process and cost before it runs, from the throughput of earlier
runs (:func:`estimate_training`), and the ETA of a running one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from services.trainer.domain.config import Hyperparameters, steps_per_epoch
from services.trainer.domain.costs import Cost, compute_cost


@dataclass(frozen=True)
class ThroughputSample:
    """What one finished run processed, how long it took, and on what: an estimate's basis.
    ``device_seconds`` is every attempt, whole (starting the worker, loading the model and
    data, the loop); ``training_seconds`` the loop, validations and checkpoint writes
    included; ``tokens_processed`` the train tokens the loop drew, ``validation_tokens`` those
    its validations read (rows x evaluations x mean tokens per row; 0: not known)."""

    tokens_processed: int
    device_seconds: float
    training_seconds: float
    device_type: str
    validation_tokens: int = 0
    attempts: int = 1


@dataclass(frozen=True)
class TrainingEstimate:
    """What a job is expected to process and cost before it runs (see the proto)."""

    train_examples: int
    train_tokens: int
    planned_steps: int
    estimated_tokens: int
    tokens_per_device_second: float
    overhead_device_seconds: float
    measured_runs: int
    device_type: str
    cost: Cost
    #: Tokens the planned validations read (0 for jobs estimated before this was counted).
    estimated_validation_tokens: int = 0


def examples_processed(train_examples: int, total_steps: int, hp: Hyperparameters) -> int:
    """Train examples the planned steps draw, every pass counted (the last step of an epoch
    takes what is left of it)."""
    per_step = max(1, hp.batch_size) * max(1, hp.gradient_accumulation_steps)
    per_epoch = steps_per_epoch(train_examples, hp)
    full_epochs, rest = divmod(total_steps, per_epoch)
    return full_epochs * train_examples + min(rest * per_step, train_examples)


#: What reading a validation token costs next to training on one: a forward pass against a
#: forward and a backward pass (about 2 of 6 FLOPs per parameter and token).
VALIDATION_TOKEN_WEIGHT = 1 / 3


def evaluations_planned(total_steps: int, eval_every_n_steps: int) -> int:
    """Validations a run of ``total_steps`` makes: at every multiple of ``eval_every_n_steps``
    and at its last step."""
    if total_steps <= 0:
        return 0
    every = max(1, eval_every_n_steps)
    return total_steps // every + (1 if total_steps % every else 0)


def work_tokens(train_tokens: float, validation_tokens: float) -> float:
    """A run's work in train-token equivalents: its validations weighed at
    :data:`VALIDATION_TOKEN_WEIGHT`."""
    return train_tokens + VALIDATION_TOKEN_WEIGHT * validation_tokens


@dataclass(frozen=True)
class DeviceTimeModel:
    """``device_seconds = fixed_seconds + work / work_per_second`` (work in train-token
    equivalents, see :func:`work_tokens`), and how many runs measured it (0: the defaults)."""

    fixed_seconds: float
    work_per_second: float
    measured_runs: int
    device_type: str


def fit_device_time(
    samples: Sequence[ThroughputSample],
    *,
    default_work_per_second: float,
    default_fixed_seconds: float,
) -> DeviceTimeModel:
    """Device time as fixed time plus work, from ``samples`` (earlier runs of one base model,
    oldest first), of which those on the newest one's device type count, and of those the
    runs that went through in one attempt when there are any (a resumed run paid for a second
    start and for the steps it redid since its checkpoint).

    The rate: their work over their training loops' time, pooled. The fixed time: the newest
    run's time outside its loop (starting the worker, importing the training stack, loading
    model and data). Not a median or a regression over all runs: the first run after the
    machine or the trainer started reads everything from a cold disk, and its start took 10
    to 17 times a later one's in the measured runs (61.5 s against 6.1 s and 3.5 s for
    tiny-bert), which a fit over every run would keep charging to warm runs; the loop itself
    is not slowed by it. No run: ``default_work_per_second`` (deliberately low) and
    ``default_fixed_seconds``."""
    usable = [
        s
        for s in samples
        if s.tokens_processed > 0 and s.training_seconds > 0 and s.device_seconds > 0
    ]
    if not usable:
        return DeviceTimeModel(default_fixed_seconds, default_work_per_second, 0, "")
    device_type = usable[-1].device_type
    on_device = [s for s in usable if s.device_type == device_type]
    basis = [s for s in on_device if s.attempts <= 1] or on_device
    work = sum(work_tokens(s.tokens_processed, s.validation_tokens) for s in basis)
    rate = work / sum(s.training_seconds for s in basis)
    newest = basis[-1]
    fixed = max(0.0, newest.device_seconds - newest.training_seconds)
    return DeviceTimeModel(fixed, rate, len(basis), device_type)


def estimate_training(
    *,
    train_examples: int,
    train_tokens: int,
    total_steps: int,
    hp: Hyperparameters,
    samples: Sequence[ThroughputSample],
    default_tokens_per_device_second: float,
    price_per_device_hour: Decimal,
    currency: str,
    validation_examples: int = 0,
    eval_every_n_steps: int = 0,
    default_overhead_device_seconds: float = 0.0,
) -> TrainingEstimate:
    """Tokens from the data: its mean tokens per train row times the rows the planned steps
    draw; the validations read ``validation_examples`` rows of the same mean length at each of
    the planned evaluations. Device time from :func:`fit_device_time` on ``samples``; cost at
    the price. ``tokens_per_device_second`` is the fitted work rate (train-token equivalents)."""
    drawn = examples_processed(train_examples, total_steps, hp)
    tokens = round(train_tokens * drawn / train_examples) if train_examples else 0
    per_row = train_tokens / train_examples if train_examples else 0.0
    validation_tokens = (
        round(per_row * validation_examples * evaluations_planned(total_steps, eval_every_n_steps))
        if eval_every_n_steps > 0
        else 0
    )
    model = fit_device_time(
        samples,
        default_work_per_second=default_tokens_per_device_second,
        default_fixed_seconds=default_overhead_device_seconds,
    )
    return TrainingEstimate(
        train_examples=train_examples,
        train_tokens=train_tokens,
        planned_steps=total_steps,
        estimated_tokens=tokens,
        tokens_per_device_second=model.work_per_second,
        overhead_device_seconds=model.fixed_seconds,
        measured_runs=model.measured_runs,
        device_type=model.device_type,
        estimated_validation_tokens=validation_tokens,
        cost=compute_cost(
            device_seconds=model.fixed_seconds
            + work_tokens(tokens, validation_tokens) / model.work_per_second,
            tokens_processed=tokens,
            price_per_device_hour=price_per_device_hour,
            currency=currency,
            device_type=model.device_type,
        ),
    )


def estimate_eta_seconds(step: int, total_steps: int, seconds_per_step: float) -> float | None:
    """Seconds to ``total_steps`` at the recent pace; None before there is a pace."""
    if step <= 0 or seconds_per_step <= 0 or total_steps <= step:
        return None if total_steps > step else 0.0
    return (total_steps - step) * seconds_per_step
