"""The events the trainer consumes, SplitCreated and DatasetAudited: they make the jobs of the
training policies on the split's dataset."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from services.trainer.adapters.repository import TrainerRepository
from services.trainer.domain.config import validate_job_config
from services.trainer.domain.costs import BudgetHolder
from services.trainer.domain.jobs import (
    JOB_PREFIX,
    DatasetAuditInfo,
    FailureReason,
    JobState,
    SplitInfo,
    policy_job_id,
)
from services.trainer.handlers.admission import (
    BUDGET_EXCEEDED,
    MODEL_REFUSED,
    admitted,
    check_model,
    new_job,
    resolved_config,
)
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.job_rows import stage_failed, utc_now
from shared.errors import FailedPrecondition, FieldViolation, PreconditionViolation


def on_split_created(session: Session, deps: TrainerDeps, split: SplitInfo) -> list[str]:
    """Remember the split and make its policies' jobs (:func:`_make_policy_jobs`) — unless
    ``deps.wait_for_dataset_audit`` and its dataset version's ``DatasetAudited`` has not
    arrived yet: :func:`on_dataset_audited` makes them then. Returns the names of the jobs made."""
    repo = TrainerRepository(session)
    now = utc_now()
    repo.remember_split(split, now=now)
    audit = repo.dataset_audit(split.dataset_version)
    if audit is None and deps.wait_for_dataset_audit:
        return []
    return _make_policy_jobs(session, deps, split, audit, now=now)


def on_dataset_audited(session: Session, deps: TrainerDeps, audit: DatasetAuditInfo) -> list[str]:
    """Remember the version's audit; make the policy jobs of its splits known so far (those
    that waited for it). A redelivered event makes nothing. Returns the names of the jobs made."""
    repo = TrainerRepository(session)
    now = utc_now()
    if not repo.remember_dataset_audit(audit, now=now):
        return []
    dataset = audit.dataset_version.split("/versions/")[0]
    created: list[str] = []
    for split in repo.known_splits_of_version(dataset, audit.dataset_version):
        created += _make_policy_jobs(session, deps, split, audit, now=now)
    return created


def _make_policy_jobs(
    session: Session,
    deps: TrainerDeps,
    split: SplitInfo,
    audit: DatasetAuditInfo | None,
    *,
    now: datetime,
) -> list[str]:
    """For each enabled policy on the split's dataset make the one job the (policy, split) pair
    names — nothing if it exists. A version the label audit BLOCKED gives FAILED jobs
    (LABEL_AUDIT_BLOCKED: never started; the message names the rule and rows). A template that
    no longer validates (say its base model was removed) gives a FAILED job, announced by
    TrainingJobFailed, so the problem is visible instead of silently skipped; so does a job
    that would exceed its model's or its policy's budget (BUDGET_EXCEEDED: it never starts; the
    model's budget is the one kept with the policy)."""
    repo = TrainerRepository(session)
    created: list[str] = []
    for policy in repo.enabled_policies_for(split.dataset):
        name = JOB_PREFIX + policy_job_id(policy.name, split.name)
        if repo.job_row(name) is not None:
            continue
        if audit is not None and audit.blocks_training:
            job = new_job(
                name=name,
                target_model=policy.target_model,
                split=split,
                config=policy.template,
                training_policy=policy.name,
                request_id="",
                deps=deps,
            )
            job.state = JobState.FAILED
            job.failure_reason = FailureReason.LABEL_AUDIT_BLOCKED
            job.failure_message = audit.refusal()
            row = repo.add_job(job, now=now)
            stage_failed(session, deps, row, now=now)
            created.append(name)
            continue
        violations: list[FieldViolation] = validate_job_config(policy.template, "job_template")
        unavailable: list[PreconditionViolation] = []
        model = check_model(policy.template, deps, "job_template", violations, unavailable)
        if violations or unavailable or model is None:
            job = new_job(
                name=name,
                target_model=policy.target_model,
                split=split,
                config=policy.template,
                training_policy=policy.name,
                request_id="",
                deps=deps,
            )
            job.state = JobState.FAILED
            refused = any(v.reason == MODEL_REFUSED for v in violations) or any(
                p.type == MODEL_REFUSED for p in unavailable
            )
            job.failure_reason = (
                FailureReason.MODEL_REFUSED if refused else FailureReason.MODEL_LOAD_FAILED
            )
            job.failure_message = "; ".join(
                [f"{v.field}: {v.description}" for v in violations]
                + [f"base model {p.subject}: {p.description}" for p in unavailable]
            )
            row = repo.add_job(job, now=now)
            stage_failed(session, deps, row, now=now)
        else:
            job = new_job(
                name=name,
                target_model=policy.target_model,
                split=split,
                config=resolved_config(policy.template, model, split, deps),
                training_policy=policy.name,
                request_id="",
                deps=deps,
            )
            holders = [
                BudgetHolder(policy.target_model, policy.model_budget),
                BudgetHolder(policy.name, policy.budget),
            ]
            try:
                job = admitted(repo, job, model, holders, deps)
            except FailedPrecondition as refused:
                job.state = JobState.FAILED
                over_budget = all(v.type == BUDGET_EXCEEDED for v in refused.violations)
                job.failure_reason = (
                    FailureReason.BUDGET_EXCEEDED if over_budget else FailureReason.DATA_UNAVAILABLE
                )
                job.failure_message = "; ".join(
                    f"{v.subject} {v.description}" for v in refused.violations
                )
                row = repo.add_job(job, now=now)
                stage_failed(session, deps, row, now=now)
            else:
                repo.add_job(job, now=now)
        created.append(name)
    return created
