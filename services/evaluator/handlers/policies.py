"""Commands (gRPC) about a model's evaluation policy: SetEvaluationPolicy, GetEvaluationPolicy."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.evaluator.adapters.repository import EvaluatorRepository
from services.evaluator.domain.evaluation import (
    CheckpointSelection,
    EvaluationPolicy,
    resolve_policy,
)
from services.evaluator.handlers.deps import EvaluatorDeps, effective_policy
from shared import names
from shared.errors import FieldViolation, InvalidArgument, NotFound
from shared.request_ids import refuse_reused_request_id, request_id_violations


def _model_of_policy(name: str, field: str) -> str:
    """``models/{m}`` from ``models/{m}/evaluationPolicy``."""
    return names.MODEL.format(**names.EVALUATION_POLICY.parse(name, field=field))


def set_evaluation_policy(
    session: Session,
    deps: EvaluatorDeps,
    *,
    name: str,
    checkpoint_selection: CheckpointSelection | None,
    max_generation_examples: int,
    max_new_tokens: int,
    batch_size: int,
    request_id: str = "",
) -> EvaluationPolicy:
    """Create or replace a model's evaluation policy; returns it with defaults resolved.

    A repeated ``request_id`` changes nothing (not even a policy someone else set since) and
    returns the policy as stored; the same id about another model is refused."""
    if problems := request_id_violations(request_id):
        raise InvalidArgument("request_id is invalid", problems)
    if not name:
        raise InvalidArgument(
            "evaluation_policy.name is required",
            [FieldViolation("evaluation_policy.name", "required", "REQUIRED")],
        )
    model = _model_of_policy(name, "evaluation_policy.name")
    repository = EvaluatorRepository(session)
    if request_id:
        applied_to = repository.policy_request(request_id)
        if applied_to is not None:
            refuse_reused_request_id(applied_to, name)
            stored = repository.policy(model)
            if stored is None:  # policies are never deleted; kept for a clear error all the same
                raise NotFound("EvaluationPolicy", name)
            return stored
    policy = resolve_policy(
        model,
        checkpoint_selection=checkpoint_selection,
        max_generation_examples=max_generation_examples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        update_time=deps.clock(),
    )
    if request_id:
        assert policy.update_time is not None
        repository.record_policy_request(request_id, name, policy.update_time)
    repository.set_policy(policy)
    return policy


def get_evaluation_policy(session: Session, deps: EvaluatorDeps, name: str) -> EvaluationPolicy:
    model = _model_of_policy(name, "name")
    return effective_policy(EvaluatorRepository(session), model, deps.defaults)
