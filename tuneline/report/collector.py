"""Gathers a model's history from the services' public gRPC APIs, through the SDK.

The scorecard is a reporting module over the services' APIs, not an RPC of one service: no
service reads another's database (DESIGN §1), and the facts live in four of them. The
registry has the lineage, the verdicts and the alias history; the trainer has the loss curves,
device-seconds and cost of every run (including runs that never produced a checkpoint); the
evaluator has each evaluation's intervals, per-slice values and timings; the dataset service
knows when each dataset version was pushed. Joining them belongs to a reader, so the registry
keeps no copy of the trainer's curves and nobody's schema grows for a report.

The registry is required. The other services are optional: when one is unreachable or has lost
a record, the scorecard falls back to what the registry holds (its copy of each evaluation's
metrics and comparisons) and lists the gap instead of failing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from tuneline.client.dataset import DatasetClient
from tuneline.client.errors import TunelineError
from tuneline.client.evaluator import EvaluatorClient
from tuneline.client.registry import RegistryClient, alias_name
from tuneline.client.trainer import TrainerClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2
from tuneline.registry.v1 import resources_pb2 as registry_pb2
from tuneline.report import scorecard
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2

#: The gated metric of a task whose gate policy names none (the evaluator's defaults).
_DEFAULT_PRIMARY = {
    common_pb2.TASK_TYPE_CLASSIFICATION: "accuracy",
    common_pb2.TASK_TYPE_CAUSAL_LM: "token_accuracy",
}


@dataclass
class Sources:
    """The SDK clients to read from; only the registry is required."""

    registry: RegistryClient
    trainer: TrainerClient | None = None
    evaluator: EvaluatorClient | None = None
    dataset: DatasetClient | None = None


def when(stamp: Timestamp) -> datetime | None:
    """A set proto timestamp as an aware UTC datetime; None when unset."""
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def money(amount: common_pb2.Money) -> float:
    return amount.units + amount.nanos / 1e9


def cost(record: common_pb2.Cost) -> scorecard.Cost:
    return scorecard.Cost(
        device_seconds=record.device_seconds,
        amount=money(record.amount),
        currency=record.amount.currency_code,
        tokens=record.tokens_processed,
        device_type=record.device_type,
    )


def _verdict(value: int) -> str:
    return common_pb2.EvaluationVerdict.Name(value).removeprefix("EVALUATION_VERDICT_")  # type: ignore[arg-type]


def _metrics(values: Iterable[common_pb2.MetricValue]) -> tuple[scorecard.MetricValue, ...]:
    return tuple(
        scorecard.MetricValue(v.metric, v.slice, v.evaluation_set, v.value, v.example_count)
        for v in values
    )


def _comparisons(
    values: Iterable[common_pb2.MetricComparison],
) -> tuple[scorecard.Comparison, ...]:
    return tuple(
        scorecard.Comparison(
            metric=c.metric,
            slice=c.slice,
            evaluation_set=c.evaluation_set,
            baseline=c.baseline,
            candidate=c.candidate,
            delta=c.delta,
            delta_lower=c.delta_ci_lower,
            delta_upper=c.delta_ci_upper,
            confidence_level=c.confidence_level,
            example_count=c.example_count,
            outcome=common_pb2.ComparisonOutcome.Name(c.outcome).removeprefix(
                "COMPARISON_OUTCOME_"
            ),
        )
        for c in values
    )


def evaluation_from_registry(record: registry_pb2.CheckpointEvaluation) -> scorecard.Evaluation:
    """The registry's copy of an evaluation (from EvaluationCompleted): no timings."""
    return scorecard.Evaluation(
        name=record.evaluation,
        verdict=_verdict(record.verdict),
        complete_time=when(record.complete_time),
        baseline_checkpoint=record.baseline_checkpoint,
        metrics=_metrics(record.metrics),
        comparisons=_comparisons(record.comparisons),
    )


def evaluation_from_evaluator(
    record: evaluator_pb2.Evaluation, registered: registry_pb2.CheckpointEvaluation
) -> scorecard.Evaluation:
    """The evaluator's own record, with the verdict time the registry acted on."""
    return scorecard.Evaluation(
        name=record.name,
        verdict=_verdict(record.verdict),
        complete_time=when(registered.complete_time) or when(record.end_time),
        baseline_checkpoint=registered.baseline_checkpoint or record.baseline.checkpoint,
        metrics=_metrics(record.metrics),
        comparisons=_comparisons(record.comparisons),
        start_time=when(record.start_time),
        end_time=when(record.end_time),
    )


def estimate(job: trainer_pb2.TrainingJob) -> scorecard.Estimate | None:
    """The estimate the trainer recorded when the job was created; None for older jobs."""
    if not job.HasField("estimate"):
        return None
    recorded = job.estimate
    return scorecard.Estimate(
        tokens=recorded.estimated_tokens,
        device_seconds=recorded.estimated_device_seconds,
        amount=money(recorded.estimated_cost),
        currency=recorded.estimated_cost.currency_code,
        planned_steps=recorded.planned_steps,
        fixed_device_seconds=recorded.overhead_device_seconds,
    )


def owner(model: registry_pb2.Model) -> scorecard.Owner:
    return scorecard.Owner(
        team=model.owner.team, contact=model.owner.contact, runbook_uri=model.owner.runbook_uri
    )


def budget(model: registry_pb2.Model) -> scorecard.Budget:
    limits = model.budget
    per_run = limits.max_cost_per_run if limits.HasField("max_cost_per_run") else None
    per_month = limits.max_cost_per_month if limits.HasField("max_cost_per_month") else None
    return scorecard.Budget(
        per_run=money(per_run) if per_run is not None else None,
        per_month=money(per_month) if per_month is not None else None,
        currency=next((m.currency_code for m in (per_run, per_month) if m is not None), ""),
    )


def run_from_trainer(job: trainer_pb2.TrainingJob) -> scorecard.TrainingRun:
    return scorecard.TrainingRun(
        name=job.name,
        state=trainer_pb2.TrainingJobState.Name(job.state).removeprefix("TRAINING_JOB_STATE_"),
        loss_curve=tuple(
            scorecard.LossPoint(
                step=p.step,
                train_loss=p.train_loss if p.HasField("train_loss") else None,
                validation_loss=p.validation_loss if p.HasField("validation_loss") else None,
            )
            for p in job.loss_trend
        ),
        cost=cost(job.cost),
        create_time=when(job.create_time),
        start_time=when(job.start_time),
        end_time=when(job.end_time),
        estimate=estimate(job),
        steps_completed=job.progress.step,
        stop_reason=(
            trainer_pb2.TrainingStopReason.Name(job.stop_reason).removeprefix(
                "TRAINING_STOP_REASON_"
            )
            if job.stop_reason
            else ""
        ),
    )


def primary_metric(model: registry_pb2.Model) -> str:
    gate = model.gate_policy
    if gate.primary_metric:
        return gate.primary_metric
    if gate.metrics:
        return gate.metrics[0].metric
    return _DEFAULT_PRIMARY.get(model.task_type, "accuracy")


def collect(sources: Sources, model: str) -> scorecard.ModelHistory:
    """Read ``models/{model}``'s history from every service it is spread over."""
    registry = sources.registry
    definition = registry.get_model(model)
    checkpoints = list(registry.list_checkpoints(model))
    moves = list(registry.list_alias_history(alias_name(model, "-")))
    gaps: list[str] = []

    evaluations: dict[str, evaluator_pb2.Evaluation] = {}
    if sources.evaluator is not None:
        try:
            evaluations = {e.name: e for e in sources.evaluator.list_evaluations(model=model)}
        except TunelineError as error:
            gaps.append(f"evaluator: {error} (evaluations from the registry's copies)")

    runs: dict[str, scorecard.TrainingRun] = {}
    if sources.trainer is not None:
        try:
            runs = {
                job.name: run_from_trainer(job)
                for job in sources.trainer.list_training_jobs(target_model=model)
            }
        except TunelineError as error:
            gaps.append(f"trainer: {error} (no loss curves or run costs)")
        else:
            for job_name in sorted({c.training_job for c in checkpoints} - runs.keys() - {""}):
                try:
                    runs[job_name] = run_from_trainer(sources.trainer.get_training_job(job_name))
                except TunelineError as error:
                    gaps.append(f"trainer: {job_name}: {error}")

    pushed: dict[str, datetime] = {}
    if sources.dataset is not None:
        for version in sorted({c.lineage.dataset_version for c in checkpoints} - {""}):
            try:
                stamp = when(sources.dataset.get_dataset_version(version).create_time)
            except TunelineError as error:
                gaps.append(f"dataset: {version}: {error}")
                continue
            if stamp is not None:
                pushed[version] = stamp

    return scorecard.ModelHistory(
        model=definition.name,
        primary_metric=primary_metric(definition),
        checkpoints=tuple(_checkpoint(c, evaluations) for c in checkpoints),
        runs=runs,
        moves=tuple(_move(m) for m in moves),
        dataset_push_times=pushed,
        gaps=tuple(gaps),
        owner=owner(definition),
        budget=budget(definition),
    )


def _checkpoint(
    record: registry_pb2.Checkpoint, evaluations: dict[str, evaluator_pb2.Evaluation]
) -> scorecard.Checkpoint:
    return scorecard.Checkpoint(
        name=record.name,
        training_job=record.training_job,
        step=record.step,
        dataset_version=record.lineage.dataset_version,
        create_time=when(record.create_time),
        cost=cost(record.cost),
        verdict=_verdict(record.verdict) if record.verdict else "",
        evaluations=tuple(
            evaluation_from_evaluator(evaluations[e.evaluation], e)
            if e.evaluation in evaluations
            else evaluation_from_registry(e)
            for e in record.evaluations
        ),
        aliases=tuple(record.aliases),
    )


def _move(record: registry_pb2.AliasMove) -> scorecard.AliasMove:
    moved = when(record.move_time)
    assert moved is not None, f"{record.alias} revision {record.revision} has no move time"
    return scorecard.AliasMove(
        alias=record.alias.rsplit("/", 1)[-1],
        revision=record.revision,
        from_checkpoint=record.from_checkpoint,
        to_checkpoint=record.to_checkpoint,
        trigger=registry_pb2.AliasMoveTrigger.Name(record.trigger).removeprefix(
            "ALIAS_MOVE_TRIGGER_"
        ),
        move_time=moved,
        trigger_time=when(record.trigger_time),
        actor=record.actor,
        reason=record.reason,
    )
