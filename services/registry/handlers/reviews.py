"""Explicit moves and reviews: PromoteCheckpoint, ApproveCheckpoint, RejectCheckpoint (with
four-eyes review when it is on)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from services.registry.adapters import protos, releases
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.stored_resources import alias_move_of
from services.registry.adapters.tables import CheckpointRow, ModelRow
from services.registry.domain.commands import (
    ApproveCheckpoint,
    PromoteCheckpoint,
    RejectCheckpoint,
)
from services.registry.domain.model import (
    PRODUCTION,
    MoveTrigger,
    PromotionPolicy,
    ReviewState,
    Verdict,
    model_name,
    parse_checkpoint_name,
)
from services.registry.domain.resources import Alias, AliasMove, Checkpoint
from services.registry.domain.reviews import four_eyes_conflict
from services.registry.handlers.artifact_refusals import refuse_unverified_artifact
from services.registry.handlers.deps import RegistryDeps
from services.registry.handlers.promotion import move_production_forward
from services.registry.handlers.request_checks import (
    MAX_REASON,
    check_alias_revision,
    earlier_request,
    optional_text,
    raise_if,
    request_key,
    require_text,
    revision_problems,
)
from services.registry.handlers.rows import (
    alias_state,
    checkpoint_in,
    checkpoint_resource,
    locked_model,
    notify_moved,
)
from shared import names
from shared.errors import FailedPrecondition, PermissionDenied, PreconditionViolation


@dataclass(frozen=True)
class Approval:
    """What ApproveCheckpoint answers: the checkpoint, production after it, and the move it made
    (``None`` when production did not move: already there, or a repeated request whose first
    made no move)."""

    checkpoint: Checkpoint
    alias: Alias
    move: AliasMove | None


def _refuse_failed_parity(repo: RegistryRepository, checkpoint: CheckpointRow) -> None:
    """FAILED_PRECONDITION when the evaluation that passed the checkpoint failed parity."""
    passed = repo.latest_passed_evaluation(checkpoint.name)
    if passed is None:
        return
    reason = releases.parity_failure_of(passed)
    if reason:
        raise FailedPrecondition(
            f"{checkpoint.name} cannot be promoted: {reason}",
            [PreconditionViolation("PARITY_FAILED", checkpoint.name, reason)],
        )


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
        job_creator=protos.checkpoint_facts(checkpoint).job_creator,
        model_creator=protos.model_creator(model),
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
    session: Session, deps: RegistryDeps, command: PromoteCheckpoint
) -> tuple[Alias, AliasMove | None]:
    """PromoteCheckpoint: move an alias (default production) to a checkpoint that PASSED."""
    model_id, _ = parse_checkpoint_name(command.checkpoint, field="checkpoint")
    alias = command.alias or PRODUCTION
    problems = optional_text(command.reason, "reason", limit=MAX_REASON)
    problems += optional_text(command.actor, "actor", limit=200)
    problems += optional_text(command.request_id, "request_id", limit=200)
    problems += revision_problems(command.expected_alias_revision)
    problems += names.id_violations(alias, field="alias", reason="INVALID_FORMAT")
    raise_if(problems, "the promotion request is invalid")
    repo = RegistryRepository(session)
    model = locked_model(repo, model_name(model_id))
    checkpoint = checkpoint_in(repo, command.checkpoint)
    if alias == PRODUCTION:
        _refuse_own_work(
            deps, model, checkpoint, command.actor, f"promote {checkpoint.name} to production"
        )
    key = f"promote:{command.request_id}" if command.request_id else ""
    if key and repo.trigger_key(model.name, key) is not None:
        return alias_state(repo, model.name, alias), None
    check_alias_revision(repo, model.name, alias, command.expected_alias_revision)
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
    _refuse_failed_parity(repo, checkpoint)
    refuse_unverified_artifact(deps, checkpoint)
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
    actor = command.actor or "unknown"
    cause = command.request_id or f"request:{uuid.uuid4()}"
    if alias == PRODUCTION:
        passed = repo.latest_passed_evaluation(checkpoint.name)
        move = move_production_forward(
            repo,
            deps,
            model,
            checkpoint,
            trigger=MoveTrigger.MANUAL,
            actor=actor,
            reason=command.reason,
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
            reason=command.reason,
            cause=cause,
            trigger_time=now,
            now=now,
        )
        notify_moved(session, deps)
    if key:
        repo.record_trigger_key(model.name, key, outcome="moved", move=move, now=now)
    return alias_state(repo, model.name, alias), alias_move_of(move)


def _review_subject(
    repo: RegistryRepository, checkpoint_ref: str, reviewer: str, reason: str
) -> tuple[ModelRow, CheckpointRow]:
    model_id, _ = parse_checkpoint_name(checkpoint_ref, field="checkpoint")
    problems = require_text(reviewer, "reviewer", limit=200) + require_text(reason, "reason")
    raise_if(problems, "the review is invalid")
    model = locked_model(repo, model_name(model_id))
    return model, checkpoint_in(repo, checkpoint_ref)


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
    session: Session, deps: RegistryDeps, command: ApproveCheckpoint
) -> Approval:
    """ApproveCheckpoint: record the approval and promote to production (trigger APPROVAL).

    A repeated ``request_id`` records nothing and answers as the first request did, its move
    included (the alias as it is now).
    """
    problems = revision_problems(command.expected_alias_revision)
    problems += optional_text(command.request_id, "request_id", limit=200)
    raise_if(problems, "the approval is invalid")
    repo = RegistryRepository(session)
    model, checkpoint = _review_subject(repo, command.checkpoint, command.reviewer, command.reason)
    _refuse_own_work(deps, model, checkpoint, command.reviewer, f"approve {checkpoint.name}")
    key = request_key("approve", command.request_id)
    earlier = earlier_request(repo, model.name, key, checkpoint.name)
    if earlier is not None or checkpoint.review_state == ReviewState.APPROVED.value:
        earlier_move = repo.get_move(earlier.move_seq) if earlier and earlier.move_seq else None
        if key and earlier is None:
            repo.record_trigger_key(
                model.name, key, outcome=checkpoint.name, move=None, now=deps.clock()
            )
        return Approval(
            checkpoint_resource(repo, checkpoint),
            alias_state(repo, model.name, PRODUCTION),
            alias_move_of(earlier_move) if earlier_move is not None else None,
        )
    if checkpoint.review_state != ReviewState.PENDING.value:
        raise _not_pending(checkpoint, "approve")
    # the approval moves production, so a stale view of it refuses the approval as a whole
    check_alias_revision(repo, model.name, PRODUCTION, command.expected_alias_revision)
    if checkpoint.verdict != Verdict.PASSED.value:
        raise FailedPrecondition(
            f"cannot approve {checkpoint.name}: its latest evaluation is {checkpoint.verdict}",
            [
                PreconditionViolation(
                    "EVALUATION_NOT_PASSED", checkpoint.name, "a later evaluation did not pass"
                )
            ],
        )
    _refuse_failed_parity(repo, checkpoint)
    if repo.production_checkpoint(model.name) != checkpoint.name:
        refuse_unverified_artifact(deps, checkpoint)
    now = deps.clock()
    checkpoint.review_state = ReviewState.APPROVED.value
    checkpoint.reviewer = command.reviewer
    checkpoint.review_reason = command.reason
    checkpoint.review_time = now
    move = None
    if repo.production_checkpoint(model.name) != checkpoint.name:
        passed = repo.latest_passed_evaluation(checkpoint.name)
        move = move_production_forward(
            repo,
            deps,
            model,
            checkpoint,
            trigger=MoveTrigger.APPROVAL,
            actor=command.reviewer,
            reason=command.reason,
            cause=passed.evaluation if passed else checkpoint.name,
            trigger_time=now,
            evaluation=passed.evaluation if passed else "",
            now=now,
        )
    if key:
        repo.record_trigger_key(model.name, key, outcome=checkpoint.name, move=move, now=now)
    session.flush()
    return Approval(
        checkpoint_resource(repo, checkpoint),
        alias_state(repo, model.name, PRODUCTION),
        alias_move_of(move) if move is not None else None,
    )


def reject_checkpoint(
    session: Session, deps: RegistryDeps, command: RejectCheckpoint
) -> Checkpoint:
    """RejectCheckpoint: record the rejection; aliases do not move.

    A repeated ``request_id`` records nothing and answers with the checkpoint.
    """
    raise_if(optional_text(command.request_id, "request_id", limit=200), "the rejection is invalid")
    repo = RegistryRepository(session)
    model, checkpoint = _review_subject(repo, command.checkpoint, command.reviewer, command.reason)
    key = request_key("reject", command.request_id)
    if earlier_request(repo, model.name, key, checkpoint.name) is not None:
        return checkpoint_resource(repo, checkpoint)
    if key:
        repo.record_trigger_key(
            model.name, key, outcome=checkpoint.name, move=None, now=deps.clock()
        )
    if checkpoint.review_state == ReviewState.REJECTED.value:
        return checkpoint_resource(repo, checkpoint)
    if checkpoint.review_state != ReviewState.PENDING.value:
        raise _not_pending(checkpoint, "reject")
    checkpoint.review_state = ReviewState.REJECTED.value
    checkpoint.reviewer = command.reviewer
    checkpoint.review_reason = command.reason
    checkpoint.review_time = deps.clock()
    session.flush()
    return checkpoint_resource(repo, checkpoint)
