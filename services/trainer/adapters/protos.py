"""Protobuf ⇄ domain conversions of the trainer: requests and events in, resources out.

The gRPC servicer and the event builders of :mod:`services.trainer.adapters.protos_events`
both use these, so a job, a checkpoint or a lineage looks the same in an RPC response and in
an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

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
)
from services.trainer.domain.costs import Budget, Cost
from services.trainer.domain.estimates import TrainingEstimate
from services.trainer.domain.jobs import (
    AuditVerdict,
    CheckpointRecord,
    DatasetAuditInfo,
    FailureReason,
    JobState,
    Lineage,
    LossPoint,
    Progress,
    SplitInfo,
    StopReason,
    TrainingJob,
    TrainingPolicy,
    thin_loss_trend,
)
from shared.errors import FieldViolation
from shared.modeling.tokenizer_fingerprint import TokenizerFingerprintRecord
from shared.ownership import Owner, money_amount, money_parts, validate_budget, validate_owner
from shared.protobuf import (
    duration_from_seconds,
    enum_field_from_proto,
    enum_from_proto,
    enum_to_proto,
    seconds_from_duration,
    set_timestamp,
    timestamp_from_datetime,
)
from shared.task_types import TASK_TYPE_PREFIX, TaskType
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2 as dataset_events_pb2
from tuneline.dataset.v1 import resources_pb2 as dataset_resources_pb2
from tuneline.splitter.v1 import events_pb2 as splitter_events_pb2
from tuneline.splitter.v1 import resources_pb2 as splitter_pb2
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2

# -- in ------------------------------------------------------------------------------------------


def base_model_from_proto(message: common_pb2.BaseModel) -> BaseModelRef:
    return BaseModelRef(
        model_name=message.model_name,
        model_path=message.model_path,
        files_sha256=message.files_sha256,
        revision=message.revision,
    )


def adapter_from_proto(
    message: common_pb2.AdapterSpec, prefix: str, violations: list[FieldViolation]
) -> AdapterSpec:
    return AdapterSpec(
        method=enum_field_from_proto(
            common_pb2.AdapterMethod,
            "ADAPTER_METHOD",
            message.method,
            AdapterMethod,
            field=f"{prefix}.method",
            violations=violations,
        ),
        rank=message.rank,
        alpha=message.alpha,
        dropout=message.dropout if message.HasField("dropout") else None,
        target_modules=tuple(message.target_modules),
        target_preset=enum_field_from_proto(
            common_pb2.TargetModulePreset,
            "TARGET_MODULE_PRESET",
            message.target_preset,
            TargetPreset,
            field=f"{prefix}.target_preset",
            violations=violations,
        ),
        modules_to_save=tuple(message.modules_to_save),
    )


def hyperparameters_from_proto(
    message: common_pb2.Hyperparameters, prefix: str, violations: list[FieldViolation]
) -> Hyperparameters:
    def optional(name: str) -> Any:
        present = message.HasField(name)  # type: ignore[arg-type]
        return getattr(message, name) if present else None

    return Hyperparameters(
        learning_rate=message.learning_rate,
        learning_rate_schedule=enum_field_from_proto(
            common_pb2.LearningRateSchedule,
            "LEARNING_RATE_SCHEDULE",
            message.learning_rate_schedule,
            LearningRateSchedule,
            field=f"{prefix}.learning_rate_schedule",
            violations=violations,
        ),
        warmup_ratio=optional("warmup_ratio"),
        warmup_steps=optional("warmup_steps"),
        weight_decay=optional("weight_decay"),
        batch_size=message.batch_size,
        gradient_accumulation_steps=message.gradient_accumulation_steps,
        epochs=message.epochs,
        max_steps=message.max_steps,
        max_seq_length=message.max_seq_length,
        seed=optional("seed"),
        precision=enum_field_from_proto(
            common_pb2.Precision,
            "PRECISION",
            message.precision,
            Precision,
            field=f"{prefix}.precision",
            violations=violations,
        ),
        gradient_checkpointing=optional("gradient_checkpointing"),
        packing=optional("packing"),
        max_grad_norm=optional("max_grad_norm"),
    )


def stopping_from_proto(message: trainer_pb2.StoppingRules) -> StoppingRules:
    return StoppingRules(
        eval_every_n_steps=message.eval_every_n_steps,
        early_stopping_patience=message.early_stopping_patience,
        early_stopping_min_delta=message.early_stopping_min_delta,
        max_duration_seconds=seconds_from_duration(message, "max_duration"),
    )


def checkpointing_from_proto(message: trainer_pb2.CheckpointPolicy) -> CheckpointPolicy:
    return CheckpointPolicy(every_n_steps=message.every_n_steps, keep_best_k=message.keep_best_k)


def job_config_from_proto(
    *,
    display_name: str,
    base_model: common_pb2.BaseModel,
    adapter: common_pb2.AdapterSpec,
    hyperparameters: common_pb2.Hyperparameters,
    stopping: trainer_pb2.StoppingRules,
    checkpointing: trainer_pb2.CheckpointPolicy,
    prefix: str,
    violations: list[FieldViolation],
) -> JobConfig:
    """A job configuration from the fields of a job or a template (same shape in both)."""
    return JobConfig(
        base_model=base_model_from_proto(base_model),
        adapter=adapter_from_proto(adapter, f"{prefix}.adapter_spec", violations),
        hyperparameters=hyperparameters_from_proto(
            hyperparameters, f"{prefix}.hyperparameters", violations
        ),
        stopping=stopping_from_proto(stopping),
        checkpointing=checkpointing_from_proto(checkpointing),
        display_name=display_name,
    )


def template_from_proto(
    message: trainer_pb2.TrainingJobTemplate, prefix: str, violations: list[FieldViolation]
) -> JobConfig:
    return job_config_from_proto(
        display_name=message.display_name,
        base_model=message.base_model,
        adapter=message.adapter_spec,
        hyperparameters=message.hyperparameters,
        stopping=message.stopping_rules,
        checkpointing=message.checkpoint_policy,
        prefix=prefix,
        violations=violations,
    )


def _label_set(parts: Any) -> tuple[str, ...]:
    return tuple(sorted({count.label for part in parts for count in part.label_distribution}))


def _rows(parts: Any, part: int) -> int:
    return sum(p.row_count for p in parts if p.part == part)


def split_from_event(event: splitter_events_pb2.SplitCreated) -> SplitInfo:
    """What the trainer keeps of a SplitCreated."""
    return _split_info(
        event.split,
        event.dataset,
        event.dataset_version,
        event.dataset_content_sha256,
        event.task_type,
        event.manifest_uri,
        event.manifest_sha256,
        event.dataset_artifact_uri,
        event.parts,
    )


def split_from_resource(split: splitter_pb2.Split) -> SplitInfo:
    """What the trainer keeps of a splitter ``Split`` resource."""
    dataset = split.dataset_version.split("/versions/")[0]
    return _split_info(
        split.name,
        dataset,
        split.dataset_version,
        split.dataset_content_sha256,
        split.task_type,
        split.manifest_uri,
        split.manifest_sha256,
        split.dataset_artifact_uri,
        split.parts,
    )


def _split_info(  # noqa: PLR0917 - the fields of SplitCreated and Split, in order
    name: str,
    dataset: str,
    version: str,
    content_sha: str,
    task: int,
    manifest_uri: str,
    manifest_sha: str,
    artifact_uri: str,
    parts: Any,
) -> SplitInfo:
    try:
        task_type = enum_from_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, task, TaskType)
    except ValueError:
        task_type = None
    if task_type is None:
        raise ValueError(f"split {name} has no known task type ({task})")
    return SplitInfo(
        name=name,
        dataset=dataset,
        dataset_version=version,
        dataset_content_sha256=content_sha,
        task_type=task_type,
        manifest_uri=manifest_uri,
        manifest_sha256=manifest_sha,
        dataset_artifact_uri=artifact_uri,
        train_rows=_rows(parts, common_pb2.SPLIT_PART_TRAIN),
        validation_rows=_rows(parts, common_pb2.SPLIT_PART_VALIDATION),
        test_rows=_rows(parts, common_pb2.SPLIT_PART_TEST),
        labels=_label_set(parts),
    )


def owner_from_proto(
    message: common_pb2.Owner, prefix: str, violations: list[FieldViolation]
) -> Owner:
    violations += validate_owner(message.team, message.contact, message.runbook_uri, prefix)
    return Owner(team=message.team, contact=message.contact, runbook_uri=message.runbook_uri)


def budget_from_proto(
    message: common_pb2.Budget, prefix: str, violations: list[FieldViolation]
) -> Budget:
    """A budget (see :func:`shared.ownership.validate_budget`)."""
    limits: dict[str, common_pb2.Money] = {
        name: getattr(message, name)
        for name in ("max_cost_per_run", "max_cost_per_month")
        if message.HasField(name)
    }
    problems = validate_budget(
        {name: (m.currency_code, m.units, m.nanos) for name, m in limits.items()}, prefix
    )
    violations += problems
    if problems:
        return Budget()
    amounts = {name: money_amount(m.units, m.nanos) for name, m in limits.items()}
    return Budget(
        currency=next((m.currency_code for m in limits.values()), ""),
        per_run=amounts.get("max_cost_per_run"),
        per_month=amounts.get("max_cost_per_month"),
    )


# -- out -----------------------------------------------------------------------------------------


def money(amount: Decimal, currency: str) -> common_pb2.Money:
    """A Decimal amount as ``Money`` (units + nanos with the same sign)."""
    units, nanos = money_parts(amount)
    return common_pb2.Money(currency_code=currency, units=units, nanos=nanos)


def cost_to_proto(cost: Cost) -> common_pb2.Cost:
    return common_pb2.Cost(
        device_seconds=cost.device_seconds,
        tokens_processed=cost.tokens_processed,
        amount=money(cost.amount, cost.currency),
        price_per_device_hour=money(cost.price_per_device_hour, cost.currency),
        device_type=cost.device_type,
        device_count=max(1, cost.device_count),
    )


def estimate_to_proto(estimate: TrainingEstimate) -> trainer_pb2.TrainingEstimate:
    return trainer_pb2.TrainingEstimate(
        train_examples=estimate.train_examples,
        train_tokens=estimate.train_tokens,
        planned_steps=estimate.planned_steps,
        estimated_tokens=estimate.estimated_tokens,
        tokens_per_device_second=estimate.tokens_per_device_second,
        overhead_device_seconds=estimate.overhead_device_seconds,
        measured_runs=estimate.measured_runs,
        device_type=estimate.device_type,
        estimated_device_seconds=estimate.cost.device_seconds,
        estimated_cost=money(estimate.cost.amount, estimate.cost.currency),
        estimated_validation_tokens=estimate.estimated_validation_tokens,
    )


def owner_to_proto(owner: Owner) -> common_pb2.Owner:
    return common_pb2.Owner(team=owner.team, contact=owner.contact, runbook_uri=owner.runbook_uri)


def budget_to_proto(budget: Budget) -> common_pb2.Budget:
    message = common_pb2.Budget()
    if budget.per_run is not None:
        message.max_cost_per_run.CopyFrom(money(budget.per_run, budget.currency))
    if budget.per_month is not None:
        message.max_cost_per_month.CopyFrom(money(budget.per_month, budget.currency))
    return message


def base_model_to_proto(ref: BaseModelRef) -> common_pb2.BaseModel:
    message = common_pb2.BaseModel(
        files_sha256=ref.files_sha256, revision=ref.revision, architecture=ref.architecture
    )
    if ref.model_name:
        message.model_name = ref.model_name
    else:
        message.model_path = ref.model_path
    return message


def adapter_to_proto(spec: AdapterSpec) -> common_pb2.AdapterSpec:
    message = common_pb2.AdapterSpec(
        method=enum_to_proto(common_pb2.AdapterMethod, "ADAPTER_METHOD", spec.method),
        rank=spec.rank,
        alpha=spec.alpha,
        target_modules=list(spec.target_modules),
        target_preset=enum_to_proto(
            common_pb2.TargetModulePreset, "TARGET_MODULE_PRESET", spec.target_preset
        ),
        modules_to_save=list(spec.modules_to_save),
    )
    if spec.dropout is not None:
        message.dropout = spec.dropout
    return message


def hyperparameters_to_proto(hp: Hyperparameters) -> common_pb2.Hyperparameters:
    message = common_pb2.Hyperparameters(
        learning_rate=hp.learning_rate,
        learning_rate_schedule=enum_to_proto(
            common_pb2.LearningRateSchedule, "LEARNING_RATE_SCHEDULE", hp.learning_rate_schedule
        ),
        batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        epochs=hp.epochs,
        max_steps=hp.max_steps,
        max_seq_length=hp.max_seq_length,
        precision=enum_to_proto(common_pb2.Precision, "PRECISION", hp.precision),
    )
    for name in (
        "warmup_ratio",
        "warmup_steps",
        "weight_decay",
        "seed",
        "gradient_checkpointing",
        "packing",
        "max_grad_norm",
    ):
        value = getattr(hp, name)
        if value is not None:
            setattr(message, name, value)
    return message


def stopping_to_proto(rules: StoppingRules) -> trainer_pb2.StoppingRules:
    message = trainer_pb2.StoppingRules(
        eval_every_n_steps=rules.eval_every_n_steps,
        early_stopping_patience=rules.early_stopping_patience,
        early_stopping_min_delta=rules.early_stopping_min_delta,
    )
    if rules.max_duration_seconds is not None:
        message.max_duration.CopyFrom(duration_from_seconds(rules.max_duration_seconds))
    return message


def checkpointing_to_proto(policy: CheckpointPolicy) -> trainer_pb2.CheckpointPolicy:
    return trainer_pb2.CheckpointPolicy(
        every_n_steps=policy.every_n_steps, keep_best_k=policy.keep_best_k
    )


def template_to_proto(config: JobConfig) -> trainer_pb2.TrainingJobTemplate:
    return trainer_pb2.TrainingJobTemplate(
        display_name=config.display_name,
        base_model=base_model_to_proto(config.base_model),
        adapter_spec=adapter_to_proto(config.adapter),
        hyperparameters=hyperparameters_to_proto(config.hyperparameters),
        stopping_rules=stopping_to_proto(config.stopping),
        checkpoint_policy=checkpointing_to_proto(config.checkpointing),
    )


def lineage_to_proto(lineage: Lineage) -> common_pb2.Lineage:
    return common_pb2.Lineage(
        dataset=lineage.dataset,
        dataset_version=lineage.dataset_version,
        dataset_content_sha256=lineage.dataset_content_sha256,
        split=lineage.split,
        split_manifest_sha256=lineage.split_manifest_sha256,
        base_model=base_model_to_proto(lineage.base_model),
        adapter_spec=adapter_to_proto(lineage.adapter),
        hyperparameters=hyperparameters_to_proto(lineage.hyperparameters),
        training_job=lineage.training_job,
        checkpoint=lineage.checkpoint,
        task_type=enum_to_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, lineage.task_type),
        target_model=lineage.target_model,
        software_versions=dict(lineage.software_versions),
    )


def loss_point_to_proto(point: LossPoint) -> trainer_pb2.LossPoint:
    message = trainer_pb2.LossPoint(step=point.step, epoch=point.epoch)
    if point.train_loss is not None:
        message.train_loss = point.train_loss
    if point.validation_loss is not None:
        message.validation_loss = point.validation_loss
    return message


_STATES: Mapping[JobState, int] = {
    state: trainer_pb2.TrainingJobState.Value(f"TRAINING_JOB_STATE_{state.value}")
    for state in JobState
}


def progress_to_proto(job: TrainingJob) -> trainer_pb2.TrainingProgress:
    progress: Progress = job.progress
    message = trainer_pb2.TrainingProgress(
        state=_STATES[job.state],  # type: ignore[arg-type]
        step=progress.step,
        total_steps=progress.total_steps or job.total_steps,
        epoch=progress.epoch,
        learning_rate=progress.learning_rate,
        tokens_per_second=progress.tokens_per_second,
        tokens_seen=progress.tokens_seen,
        latest_checkpoint=job.latest_checkpoint,
    )
    for name in ("train_loss", "validation_loss", "best_validation_loss"):
        value = getattr(progress, name)
        if value is not None:
            setattr(message, name, value)
    message.skipped_rows.extend(
        trainer_pb2.SkippedRows(
            reason=enum_to_proto(trainer_pb2.RowSkipReason, "ROW_SKIP_REASON", skipped.reason),
            row_count=skipped.count,
            example_row_ids=skipped.example_row_ids,
        )
        for skipped in progress.skipped_rows
    )
    if progress.eta_seconds is not None and job.state is JobState.RUNNING:
        message.eta.CopyFrom(duration_from_seconds(progress.eta_seconds))
    message.elapsed.CopyFrom(duration_from_seconds(progress.elapsed_seconds))
    set_timestamp(message.update_time, progress.update_time or job.update_time)
    return message


def job_to_proto(
    job: TrainingJob, loss_trend: list[LossPoint] | None = None
) -> trainer_pb2.TrainingJob:
    config = job.config
    message = trainer_pb2.TrainingJob(
        name=job.name,
        display_name=config.display_name,
        target_model=job.target_model,
        task_type=enum_to_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, job.task_type),
        base_model=base_model_to_proto(config.base_model),
        split=job.split.name,
        adapter_spec=adapter_to_proto(config.adapter),
        hyperparameters=hyperparameters_to_proto(config.hyperparameters),
        stopping_rules=stopping_to_proto(config.stopping),
        checkpoint_policy=checkpointing_to_proto(config.checkpointing),
        state=_STATES[job.state],  # type: ignore[arg-type]
        failure_reason=enum_to_proto(
            trainer_pb2.TrainingFailureReason, "TRAINING_FAILURE_REASON", job.failure_reason
        ),
        failure_message=job.failure_message,
        stop_reason=enum_to_proto(
            trainer_pb2.TrainingStopReason, "TRAINING_STOP_REASON", job.stop_reason
        ),
        progress=progress_to_proto(job),
        loss_trend=[loss_point_to_proto(p) for p in thin_loss_trend(loss_trend or [])],
        cost=cost_to_proto(job.cost),
        best_checkpoint=job.best_checkpoint,
        latest_checkpoint=job.latest_checkpoint,
        training_policy=job.training_policy,
        lineage=lineage_to_proto(job.lineage()),
        attempt_count=job.attempt_count,
        device=job.device,
        status_message=job.status_message,
        creator=job.creator,
    )
    for name in ("create_time", "start_time", "end_time", "update_time", "resume_time"):
        set_timestamp(getattr(message, name), getattr(job, name))
    if job.budget.limited:
        message.budget.CopyFrom(budget_to_proto(job.budget))
    if job.estimate is not None:
        message.estimate.CopyFrom(estimate_to_proto(job.estimate))
    return message


def checkpoint_to_proto(record: CheckpointRecord, lineage: Lineage) -> trainer_pb2.Checkpoint:
    message = trainer_pb2.Checkpoint(
        name=record.name,
        training_job=record.training_job,
        target_model=record.target_model,
        step=record.step,
        epoch=record.epoch,
        train_loss=record.train_loss,
        tokens_seen=record.tokens_seen,
        artifact_uri=record.artifact_uri,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        is_best=record.is_best,
        is_final=record.is_final,
        lineage=lineage_to_proto(lineage),
        cost=cost_to_proto(record.cost),
        create_time=timestamp_from_datetime(record.create_time),
    )
    if record.validation_loss is not None:
        message.validation_loss = record.validation_loss
    if record.stop_reason is not None:
        message.stop_reason = stop_reason_to_proto(record.stop_reason)  # type: ignore[assignment]
    if record.tokenizer_fingerprint is not None:
        message.tokenizer_fingerprint.CopyFrom(
            tokenizer_fingerprint_to_proto(record.tokenizer_fingerprint)
        )
    return message


def tokenizer_fingerprint_to_proto(
    record: TokenizerFingerprintRecord,
) -> common_pb2.TokenizerFingerprint:
    return common_pb2.TokenizerFingerprint(
        tokenizer_name=record.tokenizer_name,
        tokenizer_sha256=record.tokenizer_sha256,
        chat_template_sha256=record.chat_template_sha256,
        end_of_turn_token_ids=list(record.end_of_turn_token_ids),
        max_sequence_length=record.max_sequence_length,
    )


def policy_to_proto(policy: TrainingPolicy) -> trainer_pb2.TrainingPolicy:
    message = trainer_pb2.TrainingPolicy(
        name=policy.name,
        dataset=policy.dataset,
        target_model=policy.target_model,
        job_template=template_to_proto(policy.template),
        disabled=policy.disabled,
    )
    if policy.owner != Owner():
        message.owner.CopyFrom(owner_to_proto(policy.owner))
    if policy.budget.limited:
        message.budget.CopyFrom(budget_to_proto(policy.budget))
    for name in ("create_time", "update_time"):
        set_timestamp(getattr(message, name), getattr(policy, name))
    return message


def failure_reason_to_proto(reason: FailureReason) -> int:
    return enum_to_proto(trainer_pb2.TrainingFailureReason, "TRAINING_FAILURE_REASON", reason)


def stop_reason_to_proto(reason: StopReason) -> int:
    return enum_to_proto(trainer_pb2.TrainingStopReason, "TRAINING_STOP_REASON", reason)


def state_to_proto(state: JobState) -> int:
    return _STATES[state]


def state_from_proto(number: int) -> JobState | None:
    for state, value in _STATES.items():
        if value == number:
            return state
    return None


def dataset_audit_from_event(event: dataset_events_pb2.DatasetAudited) -> DatasetAuditInfo:
    """What the trainer keeps of a DatasetAudited; ValueError for a verdict it cannot act on."""
    prefix = "LABEL_AUDIT_VERDICT_"
    verdict_name = dataset_resources_pb2.LabelAuditVerdict.Name(event.verdict)
    try:
        verdict = AuditVerdict(verdict_name.removeprefix(prefix))
    except ValueError:
        raise ValueError(f"DatasetAudited with verdict {verdict_name}") from None
    if not event.dataset_version:
        raise ValueError("DatasetAudited without dataset_version")
    return DatasetAuditInfo(
        dataset_version=event.dataset_version,
        verdict=verdict,
        reason=event.reason,
        noise_rate=event.noise_rate,
        suspected_count=event.suspected_count,
        suspected_line_numbers=tuple(event.suspected_line_numbers),
    )
