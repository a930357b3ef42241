"""SetTrainingPolicy (the jobs a policy makes are in :mod:`.policy_jobs`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from services.trainer.adapters.repository import TrainerRepository, dumps, policy_from_row
from services.trainer.adapters.tables import PolicyRow
from services.trainer.domain.config import JobConfig, validate_job_config
from services.trainer.domain.costs import Budget
from services.trainer.domain.jobs import TrainingPolicy
from services.trainer.handlers.admission import (
    check_model,
    refuse_unavailable,
    require_target_model,
)
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.job_rows import utc_now
from shared import names
from shared.errors import FieldViolation, InvalidArgument, NotFound, PreconditionViolation
from shared.ownership import Owner
from shared.request_ids import refuse_reused_request_id, request_id_violations


@dataclass(frozen=True)
class SetPolicyCommand:
    name: str
    dataset: str
    target_model: str
    template: JobConfig
    template_present: bool
    disabled: bool
    violations: tuple[FieldViolation, ...] = ()
    owner: Owner = field(default_factory=Owner)
    budget: Budget = field(default_factory=Budget)
    #: Idempotency key: a repeat changes nothing and returns the policy as it is.
    request_id: str = ""


def set_training_policy(
    session: Session, deps: TrainerDeps, command: SetPolicyCommand
) -> TrainingPolicy:
    """SetTrainingPolicy: validate the template as a job would be, check the target model
    with the registry, then create or replace.

    The jobs a policy makes later, on SplitCreated, do not ask the registry again: the model
    was there when the policy was set and the registry never deletes one, and its budget (fixed
    when the model was created) is kept with the policy, so the Kafka consumer never waits on
    (or fails for) the registry. A repeated ``request_id`` changes nothing (not even a policy
    someone else set since) and returns the policy as stored.
    """
    prefix = "training_policy"
    violations: list[FieldViolation] = list(command.violations)
    violations += request_id_violations(command.request_id)
    violations += names.TRAINING_POLICY.violations(command.name, field=f"{prefix}.name")
    violations += names.DATASET.violations(command.dataset, field=f"{prefix}.dataset")
    violations += names.MODEL.violations(command.target_model, field=f"{prefix}.target_model")
    unavailable: list[PreconditionViolation] = []
    if not command.template_present:
        violations.append(FieldViolation(f"{prefix}.job_template", "is required", "REQUIRED"))
    else:
        violations += validate_job_config(command.template, f"{prefix}.job_template")
        template_prefix = f"{prefix}.job_template"
        check_model(command.template, deps, template_prefix, violations, unavailable)
    if violations:
        raise InvalidArgument("the training policy is invalid", violations)
    refuse_unavailable(unavailable)
    repo = TrainerRepository(session)
    if command.request_id:
        earlier = repo.policy_request(command.request_id)
        if earlier is not None:
            return _repeated_policy_request(repo, command, earlier.policy)
    model_budget = require_target_model(command.target_model, deps)
    now = utc_now()
    if command.request_id:
        repo.record_policy_request(command.request_id, command.name, now)
    row = repo.policy_row(command.name)
    if row is None:
        row = PolicyRow(name=command.name, create_time=now)
        session.add(row)
    row.dataset = command.dataset
    row.target_model = command.target_model
    row.template_json = dumps(command.template)
    row.disabled = command.disabled
    row.owner_json = dumps(command.owner)
    row.budget_json = dumps(command.budget)
    row.model_budget_json = dumps(model_budget)
    row.update_time = now
    session.flush()
    return policy_from_row(row)


def _repeated_policy_request(
    repo: TrainerRepository, command: SetPolicyCommand, applied_to: str
) -> TrainingPolicy:
    """The answer to a SetTrainingPolicy whose ``request_id`` was applied already."""
    refuse_reused_request_id(applied_to, command.name)
    row = repo.policy_row(applied_to)
    if row is None:  # policies are never deleted; kept for a clear error all the same
        raise NotFound("TrainingPolicy", applied_to)
    return policy_from_row(row)
