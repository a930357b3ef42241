"""Explicit moves and reviews: PromoteCheckpoint, ApproveCheckpoint, RejectCheckpoint (with
four-eyes review when it is on)."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from services.registry import releases
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.resources import move_to_proto
from services.registry.adapters.tables import CheckpointRow, ModelRow
from services.registry.domain import (
    PRODUCTION,
    MoveTrigger,
    PromotionPolicy,
    ReviewState,
    Verdict,
    four_eyes_conflict,
    model_name,
    parse_checkpoint_name,
)
from services.registry.handlers._artifacts import _refuse_unverified_artifact
from services.registry.handlers._requests import (
    MAX_REASON,
    _check_alias_revision,
    _earlier_request,
    _expected_revision,
    _optional_text,
    _raise_if,
    _request_key,
    _require_text,
    _revision_problems,
)
from services.registry.handlers._rows import (
    _checkpoint_in,
    _checkpoint_proto,
    _locked_model,
    _notify_moved,
    alias_state,
)
from services.registry.handlers.deps import RegistryDeps
from services.registry.handlers.promotion import _move_production_forward
from shared import names
from shared.errors import FailedPrecondition, PermissionDenied, PreconditionViolation
from tuneline.registry.v1 import resources_pb2, service_pb2


def _refuse_own_work(
    deps: RegistryDeps, model: ModelRow, checkpoint: CheckpointRow, who: str, action: str
) -> None:
    """PERMISSION_DENIED when four-eyes approval is on and ``who`` created the checkpoint's
    training job (CheckpointReady.job_creator, the trainer's verified caller) or ``model`` (the
    registry's verified caller at CreateModel); see :func:`four_eyes_conflict`."""
    if not deps.four_eyes:
        return
    conflict = four_eyes_conflict(
        who,
        job_creator=resources_pb2.Checkpoint.FromString(checkpoint.record).job_creator,
        model_creator=resources_pb2.Model.FromString(model.definition).creator,
    )
    if conflict is not None:
        made = checkpoint.training_job if conflict.created == "training_job" else model.name
        raise PermissionDenied(
            f"four-eyes approval: {who} created {made} and may not {action}; another reviewer must",
            metadata={
                "reason": "FOUR_EYES",
                "model": model.name,
                "checkpoint": checkpoint.name,
                "created": conflict.created,
                "creator": conflict.creator,
            },
        )


def promote_checkpoint(
    session: Session, deps: RegistryDeps, request: service_pb2.PromoteCheckpointRequest
) -> tuple[resources_pb2.Alias, resources_pb2.AliasMove | None]:
    """PromoteCheckpoint: move an alias (default production) to a checkpoint that PASSED."""
    model_id, _ = parse_checkpoint_name(request.checkpoint, field="checkpoint")
    alias = request.alias or PRODUCTION
    problems = _optional_text(request.reason, "reason", limit=MAX_REASON)
    problems += _optional_text(request.actor, "actor", limit=200)
    problems += _optional_text(request.request_id, "request_id", limit=200)
    problems += _revision_problems(_expected_revision(request))
    problems += names.id_violations(alias, field="alias", reason="INVALID_FORMAT")
    _raise_if(problems, "the promotion request is invalid")
    repo = RegistryRepository(session)
    model = _locked_model(repo, model_name(model_id))
    checkpoint = _checkpoint_in(repo, request.checkpoint)
    if alias == PRODUCTION:
        _refuse_own_work(
            deps, model, checkpoint, request.actor, f"promote {checkpoint.name} to production"
        )
    key = f"promote:{request.request_id}" if request.request_id else ""
    if key and repo.trigger_key(model.name, key) is not None:
        return alias_state(repo, model.name, alias), None
    _check_alias_revision(repo, model.name, alias, _expected_revision(request))
    current = repo.get_alias(model.name, alias)
    if current is not None and current.checkpoint == checkpoint.name:
        return alias_state(repo, model.name, alias), None
    if checkpoint.verdict != Verdict.PASSED.value:
        raise FailedPrecondition(
            f"{checkpoint.name} cannot be promoted: its latest evaluation is {checkpoint.verdict}",
            [
                PreconditionViolation(
                    "EVALUATION_NOT_PASSED",
                    checkpoint.name,
                    f"the latest evaluation verdict is {checkpoint.verdict}, not PASSED",
                )
            ],
        )
    releases.refuse_failed_parity(repo, checkpoint)
    _refuse_unverified_artifact(deps, checkpoint)
    if (
        alias == PRODUCTION
        and model.promotion_policy == PromotionPolicy.MANUAL.value
        and checkpoint.review_state != ReviewState.APPROVED.value
    ):
        raise FailedPrecondition(
            f"{model.name} promotes by review: approve {checkpoint.name} first",
            [
                PreconditionViolation(
                    "REVIEW_REQUIRED",
                    checkpoint.name,
                    f"review state is {checkpoint.review_state}; production needs APPROVED",
                )
            ],
        )
    now = deps.clock()
    actor = request.actor or "unknown"
    cause = request.request_id or f"request:{uuid.uuid4()}"
    if alias == PRODUCTION:
        passed = repo.latest_passed_evaluation(checkpoint.name)
        move = _move_production_forward(
            repo,
            deps,
            model,
            checkpoint,
            trigger=MoveTrigger.MANUAL,
            actor=actor,
            reason=request.reason,
            cause=cause,
            trigger_time=now,
            evaluation=passed.evaluation if passed else "",
            now=now,
        )
    else:
        move = repo.move_alias(
            model=model.name,
            alias=alias,
            to_checkpoint=checkpoint,
            trigger=MoveTrigger.MANUAL,
            actor=actor,
            reason=request.reason,
            cause=cause,
            trigger_time=now,
            now=now,
        )
        _notify_moved(session, deps)
    if key:
        repo.record_trigger_key(model.name, key, outcome="moved", move=move, now=now)
    return alias_state(repo, model.name, alias), move_to_proto(move)


def _review_subject(
    repo: RegistryRepository, checkpoint_ref: str, reviewer: str, reason: str
) -> tuple[ModelRow, CheckpointRow]:
    model_id, _ = parse_checkpoint_name(checkpoint_ref, field="checkpoint")
    problems = _require_text(reviewer, "reviewer", limit=200) + _require_text(reason, "reason")
    _raise_if(problems, "the review is invalid")
    model = _locked_model(repo, model_name(model_id))
    return model, _checkpoint_in(repo, checkpoint_ref)


def _not_pending(checkpoint: CheckpointRow, action: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"cannot {action} {checkpoint.name}: it is not pending review ({checkpoint.review_state})",
        [
            PreconditionViolation(
                "NOT_PENDING_REVIEW",
                checkpoint.name,
                f"review state is {checkpoint.review_state}; only PENDING checkpoints are reviewed",
            )
        ],
    )


def approve_checkpoint(
    session: Session, deps: RegistryDeps, request: service_pb2.ApproveCheckpointRequest
) -> service_pb2.ApproveCheckpointResponse:
    """ApproveCheckpoint: record the approval and promote to production (trigger APPROVAL).

    A repeated ``request_id`` records nothing and answers as the first request did, its move
    included (the alias as it is now).
    """
    problems = _revision_problems(_expected_revision(request))
    problems += _optional_text(request.request_id, "request_id", limit=200)
    _raise_if(problems, "the approval is invalid")
    repo = RegistryRepository(session)
    model, checkpoint = _review_subject(repo, request.checkpoint, request.reviewer, request.reason)
    _refuse_own_work(deps, model, checkpoint, request.reviewer, f"approve {checkpoint.name}")
    response = service_pb2.ApproveCheckpointResponse()
    key = _request_key("approve", request.request_id)
    earlier = _earlier_request(repo, model.name, key, checkpoint.name)
    if earlier is not None or checkpoint.review_state == ReviewState.APPROVED.value:
        earlier_move = repo.get_move(earlier.move_seq) if earlier and earlier.move_seq else None
        if earlier_move is not None:
            response.move.CopyFrom(move_to_proto(earlier_move))
        if key and earlier is None:
            repo.record_trigger_key(
                model.name, key, outcome=checkpoint.name, move=None, now=deps.clock()
            )
        response.checkpoint.CopyFrom(_checkpoint_proto(repo, checkpoint))
        response.alias.CopyFrom(alias_state(repo, model.name, PRODUCTION))
        return response
    if checkpoint.review_state != ReviewState.PENDING.value:
        raise _not_pending(checkpoint, "approve")
    # the approval moves production, so a stale view of it refuses the approval as a whole
    _check_alias_revision(repo, model.name, PRODUCTION, _expected_revision(request))
    if checkpoint.verdict != Verdict.PASSED.value:
        raise FailedPrecondition(
            f"cannot approve {checkpoint.name}: its latest evaluation is {checkpoint.verdict}",
            [
                PreconditionViolation(
                    "EVALUATION_NOT_PASSED", checkpoint.name, "a later evaluation did not pass"
                )
            ],
        )
    releases.refuse_failed_parity(repo, checkpoint)
    if repo.production_checkpoint(model.name) != checkpoint.name:
        _refuse_unverified_artifact(deps, checkpoint)
    now = deps.clock()
    checkpoint.review_state = ReviewState.APPROVED.value
    checkpoint.reviewer = request.reviewer
    checkpoint.review_reason = request.reason
    checkpoint.review_time = now
    move = None
    if repo.production_checkpoint(model.name) != checkpoint.name:
        passed = repo.latest_passed_evaluation(checkpoint.name)
        move = _move_production_forward(
            repo,
            deps,
            model,
            checkpoint,
            trigger=MoveTrigger.APPROVAL,
            actor=request.reviewer,
            reason=request.reason,
            cause=passed.evaluation if passed else checkpoint.name,
            trigger_time=now,
            evaluation=passed.evaluation if passed else "",
            now=now,
        )
        response.move.CopyFrom(move_to_proto(move))
    if key:
        repo.record_trigger_key(model.name, key, outcome=checkpoint.name, move=move, now=now)
    session.flush()
    response.checkpoint.CopyFrom(_checkpoint_proto(repo, checkpoint))
    response.alias.CopyFrom(alias_state(repo, model.name, PRODUCTION))
    return response


def reject_checkpoint(
    session: Session, deps: RegistryDeps, request: service_pb2.RejectCheckpointRequest
) -> resources_pb2.Checkpoint:
    """RejectCheckpoint: record the rejection; aliases do not move.

    A repeated ``request_id`` records nothing and answers with the checkpoint.
    """
    _raise_if(
        _optional_text(request.request_id, "request_id", limit=200), "the rejection is invalid"
    )
    repo = RegistryRepository(session)
    model, checkpoint = _review_subject(repo, request.checkpoint, request.reviewer, request.reason)
    key = _request_key("reject", request.request_id)
    if _earlier_request(repo, model.name, key, checkpoint.name) is not None:
        return _checkpoint_proto(repo, checkpoint)
    if key:
        repo.record_trigger_key(
            model.name, key, outcome=checkpoint.name, move=None, now=deps.clock()
        )
    if checkpoint.review_state == ReviewState.REJECTED.value:
        return _checkpoint_proto(repo, checkpoint)
    if checkpoint.review_state != ReviewState.PENDING.value:
        raise _not_pending(checkpoint, "reject")
    checkpoint.review_state = ReviewState.REJECTED.value
    checkpoint.reviewer = request.reviewer
    checkpoint.review_reason = request.reason
    checkpoint.review_time = deps.clock()
    session.flush()
    return _checkpoint_proto(repo, checkpoint)
