"""Commands (gRPC) about evaluations: EvaluateCheckpoint, GetEvaluation, ListEvaluations."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.evaluator.adapters.repository import REQUEST_KEY, EvaluatorRepository
from services.evaluator.domain.evaluation import (
    CheckpointRef,
    DependencyUnavailable,
    Evaluation,
    ModelSpec,
    UnknownToRegistry,
    evaluation_sets_key,
    new_evaluation_name,
)
from services.evaluator.domain.gate import Verdict
from services.evaluator.handlers.deps import EvaluatorDeps, RegistryLookup
from shared import names
from shared.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Unavailable,
)
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size


def _check_evaluate_request(
    checkpoint: str, model: str, baseline_checkpoint: str, request_id: str
) -> None:
    violations = []
    if not checkpoint:
        violations.append(FieldViolation("checkpoint", "required", "REQUIRED"))
    if len(request_id) > 200:
        violations.append(FieldViolation("request_id", "at most 200 characters", "TOO_LONG"))
    if violations:
        raise InvalidArgument("invalid EvaluateCheckpoint request", violations)
    names.TRAINER_CHECKPOINT.check(checkpoint, field="checkpoint")
    if model:
        names.MODEL.check(model, field="model")
    if baseline_checkpoint:
        names.MODEL_CHECKPOINT.check(baseline_checkpoint, field="baseline_checkpoint")


def _model_to_evaluate_for(
    registry: RegistryLookup, model_name: str, candidate: CheckpointRef
) -> ModelSpec:
    """The registry's model, checked to be one the candidate can be evaluated for."""
    try:
        spec = registry.model(model_name)
    except UnknownToRegistry:
        raise NotFound("model", model_name) from None
    except DependencyUnavailable as error:
        raise Unavailable(error.message) from error
    if not spec.evaluation_set.dataset_version:
        raise FailedPrecondition(
            f"{model_name} has no evaluation set",
            [PreconditionViolation("NO_EVALUATION_SET", model_name, "the registry model has none")],
        )
    if candidate.task_type is not None and candidate.task_type is not spec.task_type:
        raise FailedPrecondition(
            f"{candidate.name} is a {candidate.task_type.value} checkpoint; {model_name} is "
            f"{spec.task_type.value}",
            [PreconditionViolation("TASK_TYPE_MISMATCH", candidate.name, "task types differ")],
        )
    return spec


def evaluate_checkpoint(
    session: Session,
    deps: EvaluatorDeps,
    *,
    checkpoint: str,
    model: str = "",
    baseline_checkpoint: str = "",
    force: bool = False,
    request_id: str = "",
) -> tuple[Evaluation, bool]:
    """Queue an evaluation of ``checkpoint``; returns it and whether this call created it.

    Idempotent: with a ``request_id`` seen before, the evaluation that request created; without
    ``force``, an existing evaluation (not failed) of the same checkpoint sha256 for the same
    model on the same evaluation set versions.
    """
    _check_evaluate_request(checkpoint, model, baseline_checkpoint, request_id)
    registry = deps.registry
    repository = EvaluatorRepository(session)
    if request_id:
        earlier = repository.by_dedupe_key(REQUEST_KEY + request_id)
        if earlier is not None:
            return earlier, False
    candidate = repository.checkpoint(checkpoint)
    if candidate is None:
        raise NotFound("checkpoint", checkpoint)
    model_name = model or candidate.target_model
    if not model_name:
        raise FailedPrecondition(
            "the checkpoint names no target model; say which model's gate applies",
            [PreconditionViolation("NO_TARGET_MODEL", checkpoint, "set the request's model")],
        )
    spec = _model_to_evaluate_for(registry, model_name, candidate)
    if not force:
        same = repository.same_evaluation(
            candidate.sha256, model_name, evaluation_sets_key(spec.evaluation_sets)
        )
        if same is not None:
            return same, False
    if baseline_checkpoint:
        try:
            registry.checkpoint(baseline_checkpoint)
        except UnknownToRegistry:
            raise NotFound("checkpoint", baseline_checkpoint) from None
        except DependencyUnavailable as error:
            raise Unavailable(error.message) from error
    evaluation = Evaluation(
        name=new_evaluation_name(),
        checkpoint=candidate,
        model=model_name,
        create_time=deps.clock(),
        requested_baseline=baseline_checkpoint,
        request_id=request_id,
        selection_reason="requested by EvaluateCheckpoint",
    ).resolved(spec)
    repository.add_evaluation(
        evaluation, dedupe_key=REQUEST_KEY + request_id if request_id else None
    )
    return evaluation, True


def get_evaluation(session: Session, name: str) -> Evaluation:
    names.EVALUATION.check(name, field="name")
    evaluation = EvaluatorRepository(session).evaluation(name)
    if evaluation is None:
        raise NotFound("evaluation", name)
    return evaluation


def list_evaluations(
    session: Session,
    *,
    page_size: int = 0,
    page_token: str = "",
    model: str = "",
    checkpoint: str = "",
    verdict: Verdict | None = None,
) -> tuple[list[Evaluation], str]:
    """A page of evaluations, newest first, and the next page's token ("" on the last)."""
    if model:
        names.MODEL.check(model, field="model")
    if checkpoint:
        names.TRAINER_CHECKPOINT.check(checkpoint, field="checkpoint")
    size = resolve_page_size(page_size)
    query = {"model": model, "checkpoint": checkpoint, "verdict": verdict.value if verdict else ""}
    position = decode_page_token(page_token, query)
    if position is not None and (len(position) != 1 or not isinstance(position[0], int)):
        raise InvalidArgument(
            "page_token is not a token this service issued",
            [FieldViolation("page_token", "not a valid page token", "INVALID_PAGE_TOKEN")],
        )
    rows = EvaluatorRepository(session).list_evaluations(
        model=model,
        checkpoint=checkpoint,
        verdict=verdict,
        before_seq=int(position[0]) if position else None,
        limit=size + 1,
    )
    page = rows[:size]
    next_token = encode_page_token(query, [page[-1][0]]) if len(rows) > size else ""
    return [evaluation for _seq, evaluation in page], next_token
