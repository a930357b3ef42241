"""The trainer's domain rules: validation, defaults, schedules, early stopping, retention,
cost, policy job ids and the data order of steps (no torch, no I/O)."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal

import pytest

from services.trainer.adapters.engine.sampling import (
    epoch_order,
    micro_batches,
    step_groups,
    token_budget_micro_batches,
)
from services.trainer.domain.config import (
    AdapterMethod,
    AdapterSpec,
    BaseModelRef,
    CheckpointPolicy,
    Hyperparameters,
    JobConfig,
    LearningRateSchedule,
    Precision,
    StoppingRules,
    TargetPreset,
    planned_steps,
    resolve_adapter,
    resolve_checkpointing,
    resolve_for_device,
    resolve_hyperparameters,
    resolve_stopping,
    target_modules_for,
    validate_job_config,
)
from services.trainer.domain.costs import compute_cost
from services.trainer.domain.jobs import (
    JobState,
    LossPoint,
    can_transition,
    policy_job_id,
    thin_loss_trend,
)
from services.trainer.domain.jsonable import from_jsonable, jsonable
from services.trainer.domain.training_rules import (
    EarlyStopping,
    KeptCheckpoint,
    checkpoints_to_delete,
    learning_rate_at,
)
from shared.names import is_resource_id
from shared.task_types import TaskType


def _config(**changes: object) -> JobConfig:
    base = JobConfig(base_model=BaseModelRef(model_name="m"))
    return JobConfig(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_a_default_config_is_valid() -> None:
    assert validate_job_config(_config(), "training_job") == []


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (_config(adapter=AdapterSpec(rank=-1)), "training_job.adapter_spec.rank"),
        (_config(adapter=AdapterSpec(rank=4096)), "training_job.adapter_spec.rank"),
        (_config(adapter=AdapterSpec(alpha=-2.0)), "training_job.adapter_spec.alpha"),
        (_config(adapter=AdapterSpec(dropout=1.0)), "training_job.adapter_spec.dropout"),
        (_config(adapter=AdapterSpec(dropout=-0.1)), "training_job.adapter_spec.dropout"),
        (
            _config(adapter=AdapterSpec(target_modules=("q_proj", "not a module"))),
            "training_job.adapter_spec.target_modules[1]",
        ),
        (
            _config(hyperparameters=Hyperparameters(learning_rate=-1e-4)),
            "training_job.hyperparameters.learning_rate",
        ),
        (
            _config(hyperparameters=Hyperparameters(learning_rate=math.nan)),
            "training_job.hyperparameters.learning_rate",
        ),
        (
            _config(hyperparameters=Hyperparameters(warmup_ratio=1.0)),
            "training_job.hyperparameters.warmup_ratio",
        ),
        (
            _config(hyperparameters=Hyperparameters(batch_size=-8)),
            "training_job.hyperparameters.batch_size",
        ),
        (
            _config(hyperparameters=Hyperparameters(epochs=-1)),
            "training_job.hyperparameters.epochs",
        ),
        (
            _config(hyperparameters=Hyperparameters(max_seq_length=4)),
            "training_job.hyperparameters.max_seq_length",
        ),
        (
            _config(hyperparameters=Hyperparameters(max_grad_norm=0.0)),
            "training_job.hyperparameters.max_grad_norm",
        ),
        (
            _config(stopping=StoppingRules(early_stopping_patience=-1)),
            "training_job.stopping_rules.early_stopping_patience",
        ),
        (
            _config(stopping=StoppingRules(max_duration_seconds=0)),
            "training_job.stopping_rules.max_duration",
        ),
        (
            _config(checkpointing=CheckpointPolicy(keep_best_k=-1)),
            "training_job.checkpoint_policy.keep_best_k",
        ),
        (_config(base_model=BaseModelRef()), "training_job.base_model"),
        (
            _config(base_model=BaseModelRef(model_name="a", model_path="/b")),
            "training_job.base_model",
        ),
    ],
)
def test_each_invalid_field_is_reported_with_its_path(config: JobConfig, field: str) -> None:
    assert field in {v.field for v in validate_job_config(config, "training_job")}


def test_all_violations_are_reported_at_once() -> None:
    config = _config(
        adapter=AdapterSpec(rank=-1, dropout=2.0),
        hyperparameters=Hyperparameters(learning_rate=-1.0, max_steps=-1),
    )
    assert len(validate_job_config(config, "p")) == 4


def test_defaults_resolve_per_task_and_architecture() -> None:
    bert = resolve_adapter(AdapterSpec(), TaskType.CLASSIFICATION, "bert")
    assert bert.method is AdapterMethod.LORA
    assert (bert.rank, bert.alpha, bert.dropout) == (8, 16.0, 0.0)
    assert bert.target_modules == ("query", "key", "value")
    assert bert.modules_to_save == ("classifier",)
    llama = resolve_adapter(AdapterSpec(rank=16), TaskType.CAUSAL_LM, "llama")
    assert llama.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert llama.modules_to_save == ()
    assert llama.alpha == 32.0
    head = resolve_adapter(AdapterSpec(), TaskType.CLASSIFICATION, "llama")
    assert head.modules_to_save == ("score",)
    explicit = resolve_adapter(AdapterSpec(target_modules=("fc1",)), TaskType.CAUSAL_LM, "llama")
    assert explicit.target_modules == ("fc1",)
    # no dropout unless asked for (peft then skips the dropout layer); an explicit one is kept
    assert resolve_adapter(AdapterSpec(dropout=0.1), TaskType.CAUSAL_LM, "llama").dropout == 0.1


def test_target_modules_explicit_preset_or_unknown() -> None:
    assert target_modules_for(AdapterSpec(target_modules=("a",)), "whatever") == ("a",)
    assert (
        target_modules_for(AdapterSpec(target_preset=TargetPreset.ALL_LINEAR), "x") == "all-linear"
    )
    assert target_modules_for(AdapterSpec(), "an-unknown-architecture") is None


def test_hyperparameter_defaults_and_the_device_dependent_ones() -> None:
    hp = resolve_hyperparameters(Hyperparameters(), model_max_length=8192)
    assert hp.learning_rate == 2e-4
    assert hp.batch_size == 16
    assert hp.gradient_accumulation_steps == 1
    assert hp.epochs == 1.0
    assert hp.max_seq_length == 512
    assert hp.seed == 42
    assert hp.learning_rate_schedule is LearningRateSchedule.LINEAR
    assert hp.precision is None
    assert hp.packing is None
    assert resolve_hyperparameters(Hyperparameters(), 128).max_seq_length == 128
    assert resolve_hyperparameters(Hyperparameters(max_steps=10), 128).epochs == 0.0
    cpu = resolve_for_device(hp, TaskType.CAUSAL_LM, cuda=False)
    gpu = resolve_for_device(hp, TaskType.CAUSAL_LM, cuda=True)
    assert (cpu.precision, cpu.packing) == (Precision.FP32, False)
    assert (gpu.precision, gpu.packing) == (Precision.BF16, True)
    assert resolve_for_device(hp, TaskType.CLASSIFICATION, cuda=True).packing is False


def test_planned_steps_take_the_first_bound() -> None:
    hp = resolve_hyperparameters(Hyperparameters(batch_size=8, epochs=2), 128)
    assert planned_steps(100, hp) == 26  # ceil(100 / 8) = 13 per epoch
    bounded = resolve_hyperparameters(Hyperparameters(batch_size=8, epochs=2, max_steps=5), 128)
    assert planned_steps(100, bounded) == 5
    accumulated = resolve_hyperparameters(
        Hyperparameters(batch_size=8, gradient_accumulation_steps=4, epochs=0.5), 128
    )
    assert planned_steps(100, accumulated) == 2


def test_validation_and_checkpoint_intervals_default_to_an_epoch_capped_at_500() -> None:
    assert resolve_stopping(StoppingRules(), per_epoch=40).eval_every_n_steps == 40
    assert resolve_stopping(StoppingRules(), per_epoch=4000).eval_every_n_steps == 500
    stopping = resolve_stopping(StoppingRules(eval_every_n_steps=7), per_epoch=40)
    assert resolve_checkpointing(CheckpointPolicy(), stopping).every_n_steps == 7
    assert resolve_checkpointing(CheckpointPolicy(every_n_steps=3), stopping).every_n_steps == 3


@pytest.mark.parametrize("schedule", list(LearningRateSchedule))
def test_learning_rate_warms_up_then_follows_the_schedule(schedule: LearningRateSchedule) -> None:
    rates = [
        learning_rate_at(s, peak=1.0, total_steps=100, warmup_steps=10, schedule=schedule)
        for s in range(100)
    ]
    assert rates[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert max(rates) == pytest.approx(1.0)
    if schedule is LearningRateSchedule.CONSTANT:
        assert rates[-1] == 1.0
    else:
        assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
        assert rates[-1] < 0.05


def test_early_stopping_counts_validations_without_improvement() -> None:
    rule = EarlyStopping(patience=2, min_delta=0.01)
    assert rule.observe(1.0)
    assert not rule.observe(0.995)  # better, but not by min_delta
    assert not rule.should_stop
    assert not rule.observe(1.2)
    assert rule.should_stop
    never = EarlyStopping(patience=0)
    for loss in (1.0, 2.0, 3.0):
        never.observe(loss)
    assert not never.should_stop


def test_retention_keeps_the_best_k_and_the_final() -> None:
    kept = [
        KeptCheckpoint(10, 0.9),
        KeptCheckpoint(20, 0.5),
        KeptCheckpoint(30, 0.7),
        KeptCheckpoint(40, None),
        KeptCheckpoint(50, 0.95, is_final=True),
    ]
    assert checkpoints_to_delete(kept, keep_best_k=2) == [10, 40]
    assert checkpoints_to_delete(kept, keep_best_k=0) == []
    assert checkpoints_to_delete(kept, keep_best_k=10) == []


def test_cost_prices_device_seconds() -> None:
    cost = compute_cost(
        device_seconds=1800.0,
        tokens_processed=1000,
        price_per_device_hour=Decimal("2.50"),
        currency="EUR",
        device_type="cuda:NVIDIA H200",
    )
    assert cost.amount == Decimal("1.250000000")
    assert cost.currency == "EUR"
    assert cost.tokens_processed == 1000


def test_policy_job_ids_are_deterministic_and_valid() -> None:
    first = policy_job_id("trainingPolicies/reviews", "datasets/d/versions/v1/splits/s")
    assert first == policy_job_id("trainingPolicies/reviews", "datasets/d/versions/v1/splits/s")
    assert first != policy_job_id("trainingPolicies/reviews", "datasets/d/versions/v2/splits/s")
    assert first.startswith("reviews-")
    long = policy_job_id("trainingPolicies/" + "a" * 63, "datasets/d/versions/v1/splits/s")
    assert is_resource_id(first)
    assert is_resource_id(long)


def test_job_states_move_forward_only() -> None:
    assert can_transition(JobState.QUEUED, JobState.RUNNING)
    assert can_transition(JobState.QUEUED, JobState.CANCELLED)
    assert can_transition(JobState.RUNNING, JobState.SUCCEEDED)
    assert not can_transition(JobState.SUCCEEDED, JobState.RUNNING)
    assert not can_transition(JobState.CANCELLED, JobState.QUEUED)
    assert JobState.FAILED.terminal
    assert not JobState.RUNNING.terminal


def test_configs_round_trip_through_json() -> None:
    config = _config(
        adapter=AdapterSpec(method=AdapterMethod.DORA, target_modules=("a", "b"), dropout=0.1),
        hyperparameters=Hyperparameters(precision=Precision.BF16, warmup_steps=3, packing=True),
        stopping=StoppingRules(max_duration_seconds=60.0),
    )
    assert from_jsonable(JobConfig, jsonable(config)) == config


def test_loss_trend_is_thinned_evenly_keeping_both_ends() -> None:
    points = [LossPoint(step=s, epoch=s / 10) for s in range(1, 2501)]
    thinned = thin_loss_trend(points, limit=1000)
    assert len(thinned) == 1000
    assert thinned[0].step == 1
    assert thinned[-1].step == 2500


def test_steps_hold_the_same_examples_whatever_the_micro_batch() -> None:
    lengths = [(i * 37) % 50 + 1 for i in range(203)]
    groups = step_groups(lengths, seed=3, epoch=1, examples_per_step=16, group_by_length=True)
    assert sorted(i for g in groups for i in g) == list(range(203))
    assert all(len(g) == 16 for g in groups[:-1])
    assert len(groups[-1]) == 203 % 16
    assert groups == step_groups(
        lengths, seed=3, epoch=1, examples_per_step=16, group_by_length=True
    )
    assert groups != step_groups(
        lengths, seed=3, epoch=2, examples_per_step=16, group_by_length=True
    )
    # an OOM retry halves the micro-batch: the step's examples stay the same
    for group in groups:
        whole = micro_batches(group, lengths, micro_batch_size=16, group_by_length=True)
        halves = micro_batches(group, lengths, micro_batch_size=8, group_by_length=True)
        assert sorted(i for m in whole for i in m) == sorted(i for m in halves for i in m)
    # grouping by length keeps micro-batches' lengths close
    spread = [max(lengths[i] for i in g) - min(lengths[i] for i in g) for g in groups]
    assert sum(spread) / len(spread) < 25
    assert epoch_order(10, seed=1, epoch=0) == epoch_order(10, seed=1, epoch=0)


def test_token_budget_micro_batches_fill_to_the_budget_without_splitting_an_example() -> None:
    lengths = [(i * 37) % 50 + 1 for i in range(203)]
    lengths[8] = 150  # longer than the budget: alone, never split
    group = list(range(0, 203, 2))
    batches = token_budget_micro_batches(group, lengths, token_budget=120)
    assert sorted(i for b in batches for i in b) == group
    assert [b for b in batches if sum(lengths[i] for i in b) > 120] == [[8]]
    # nearly full: as few micro-batches as the tokens need, give or take one
    tokens = sum(lengths[i] for i in group)
    assert len(batches) <= -(-tokens // 120) + 1
    assert batches == token_budget_micro_batches(group, lengths, token_budget=120)
    with pytest.raises(ValueError, match="positive"):
        token_budget_micro_batches(group, lengths, token_budget=0)
