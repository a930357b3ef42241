"""CreateTrainingJob (and its ``validate_only`` estimate) and CancelTrainingJob."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.trainer.adapters.repository import TrainerRepository, job_from_row
from services.trainer.domain.config import JobConfig, validate_job_config
from services.trainer.domain.costs import Budget, BudgetHolder
from services.trainer.domain.estimates import TrainingEstimate
from services.trainer.domain.jobs import JOB_PREFIX, JobState, StopReason, TrainingJob
from services.trainer.handlers.admission import (
    LABEL_AUDIT_BLOCKED,
    admitted,
    check_model,
    find_split,
    new_job,
    refuse_unavailable,
    require_target_model,
    resolved_config,
)
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.job_rows import utc_now
from shared import names
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Unavailable,
)
from shared.modeling import ResolvedModel
from shared.task_types import TaskType


@dataclass(frozen=True)
class CreateJobCommand:
    """A CreateTrainingJob request, converted."""

    job_id: str
    request_id: str
    target_model: str
    split: str
    task_type: TaskType | None
    config: JobConfig
    #: Violations found while converting the request (e.g. unknown enum numbers).
    violations: tuple[FieldViolation, ...] = ()
    #: The verified caller (shared.security.caller_name; never the request's word): the job's
    #: creator, whom the registry's four-eyes approval keeps from approving its checkpoints.
    creator: str = ""


def create_training_job(
    session: Session, deps: TrainerDeps, command: CreateJobCommand
) -> TrainingJob:
    """CreateTrainingJob: validate everything (spec, split, base model), then queue the job.

    Raises InvalidArgument with every field violation at once, AlreadyExists for a taken id,
    FailedPrecondition for a split the trainer cannot find or a target model the registry does
    not have, Unavailable when the registry cannot be asked. A repeated ``request_id`` returns
    the job the first request created.
    """
    repo = TrainerRepository(session)
    if command.request_id:
        existing = repo.job_row_by_request_id(command.request_id)
        if existing is not None:
            return job_from_row(existing, deps.pricing)
    job, model, model_budget = _validated_job(repo, command, deps)
    job = admitted(repo, job, model, [BudgetHolder(command.target_model, model_budget)], deps)
    row = repo.add_job(job, now=utc_now())
    try:
        session.flush()
    except IntegrityError:  # a concurrent request with the same id or request_id won
        # the caller's transaction rolls back as this leaves it
        raise AlreadyExists("TrainingJob", job.name) from None
    return job_from_row(row, deps.pricing)


def estimate_training_job(
    session: Session, deps: TrainerDeps, command: CreateJobCommand
) -> tuple[TrainingJob, TrainingEstimate]:
    """CreateTrainingJob with ``validate_only``: every check a real request gets, then the
    estimate of its tokens (the split's train rows encoded as training will), device time
    (throughput of earlier SUCCEEDED runs of the same base model on the newest run's device
    type, else the configured default) and cost, and the budget check a real request gets.
    Creates nothing."""
    repo = TrainerRepository(session)
    job, model, model_budget = _validated_job(repo, command, deps)
    if deps.token_counter is None:
        raise Unavailable("this trainer does not estimate jobs")
    job = admitted(
        repo,
        job,
        model,
        [BudgetHolder(command.target_model, model_budget)],
        deps,
        estimate_required=True,
    )
    assert job.estimate is not None
    return replace(job, name="", total_steps=job.estimate.planned_steps), job.estimate


def _validated_job(
    repo: TrainerRepository, command: CreateJobCommand, deps: TrainerDeps
) -> tuple[TrainingJob, ResolvedModel, Budget]:
    """The job a CreateTrainingJob request describes, every check passed, not yet stored, with
    its target model's budget."""
    prefix = "training_job"
    violations: list[FieldViolation] = list(command.violations)
    if command.job_id:
        violations += names.id_violations(
            command.job_id, field="training_job_id", reason="INVALID_FORMAT"
        )
    if len(command.request_id) > 128:
        violations.append(FieldViolation("request_id", "at most 128 characters", "TOO_LONG"))
    violations += names.MODEL.violations(command.target_model, field=f"{prefix}.target_model")
    violations += names.SPLIT.violations(command.split, field=f"{prefix}.split")
    violations += validate_job_config(command.config, prefix)
    unavailable: list[PreconditionViolation] = []
    model = check_model(command.config, deps, prefix, violations, unavailable)
    if violations:
        raise InvalidArgument("the training job is invalid", violations)
    refuse_unavailable(unavailable)
    assert model is not None
    split = find_split(repo, command.split, deps)
    audit = repo.dataset_audit(split.dataset_version)
    if audit is not None and audit.blocks_training:
        raise FailedPrecondition(
            f"split {split.name} is of a dataset version its label audit blocked",
            [PreconditionViolation(LABEL_AUDIT_BLOCKED, split.dataset_version, audit.refusal())],
        )
    if command.task_type is not None and command.task_type is not split.task_type:
        raise InvalidArgument(
            "the task type does not match the split",
            [
                FieldViolation(
                    f"{prefix}.task_type",
                    f"the split is {split.task_type.value}, not {command.task_type.value}",
                    "TASK_TYPE_MISMATCH",
                )
            ],
        )
    model_budget = require_target_model(command.target_model, deps)
    name = JOB_PREFIX + (command.job_id or f"j-{uuid.uuid4().hex[:20]}")
    if repo.job_row(name) is not None:
        raise AlreadyExists("TrainingJob", name)
    job = new_job(
        name=name,
        target_model=command.target_model,
        split=split,
        config=resolved_config(command.config, model, split, deps),
        training_policy="",
        request_id=command.request_id,
        creator=command.creator,
        deps=deps,
    )
    return job, model, model_budget


def cancel_training_job(session: Session, deps: TrainerDeps, name: str, reason: str) -> TrainingJob:
    """CancelTrainingJob: a queued job is cancelled now; a running one is flagged and its
    worker stops within seconds (the supervisor sends the cancel). Cancelling a cancelled job
    is a no-op; a succeeded or failed job gives FAILED_PRECONDITION."""
    if len(reason) > 1000:
        raise InvalidArgument(
            "reason is too long", [FieldViolation("reason", "at most 1000 characters", "TOO_LONG")]
        )
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None:
        raise NotFound("TrainingJob", name)
    state = JobState(row.state)
    now = utc_now()
    if state is JobState.CANCELLED:
        return job_from_row(row, deps.pricing)
    if state.terminal:
        raise FailedPrecondition(
            f"job {name} is {state.value} and cannot be cancelled",
            [PreconditionViolation("JOB_TERMINAL", name, f"the job already {state.value.lower()}")],
        )
    row.cancel_requested = True
    row.cancel_reason = reason
    if state is JobState.QUEUED:
        row.state = JobState.CANCELLED.value
        row.stop_reason = StopReason.CANCELLED.value
        row.end_time = now
    row.update_time = now
    return job_from_row(row, deps.pricing)
