"""Evaluations and automatic promotion: EvaluationCompleted attaches the verdict to its checkpoint
and, when the policy says so, moves candidate and production forward."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from services.registry.adapters import protos, releases
from services.registry.adapters.artifact_checks import RELEASE_LOCATION
from services.registry.adapters.commit_hooks import after_commit
from services.registry.adapters.protos import EVALUATION_COMPLETED
from services.registry.adapters.repository import PARKED, REFUSED, RegistryRepository
from services.registry.adapters.tables import AliasMoveRow, CheckpointRow, EvaluationRow, ModelRow
from services.registry.domain.events import CompletedEvaluation
from services.registry.domain.model import (
    CANDIDATE,
    PRODUCTION,
    SERVICE_ACTOR,
    MoveTrigger,
    PromotionPolicy,
    ReviewState,
    Verdict,
)
from services.registry.domain.promotion import (
    CheckpointOfJob,
    Decision,
    EvaluationFacts,
    EvaluationOutcome,
    decide_on_evaluation,
)
from services.registry.handlers.artifact_refusals import artifact_refused, unverified_artifact
from services.registry.handlers.deferred import defer
from services.registry.handlers.deps import RegistryDeps
from services.registry.handlers.rows import notify_moved
from shared.events import stage_event

log = logging.getLogger(__name__)


def _baseline_in_registry(repo: RegistryRepository, model: str, event: CompletedEvaluation) -> str:
    """The registry name of the checkpoint the evaluation compared with ("" = base model)."""
    baseline = event.baseline_checkpoint
    if baseline is None:
        return ""
    if baseline.startswith(f"{model}/checkpoints/"):
        return baseline
    if baseline:  # a trainer name: find what the registry calls it
        row = repo.get_checkpoint_by_source(model, baseline)
        if row is not None:
            return row.name
    return baseline or f"unknown checkpoint {event.baseline_sha256[:12]}"


def _job_interrupted(repo: RegistryRepository, checkpoint: CheckpointRow) -> bool:
    """True when any checkpoint of the candidate's training job says training was interrupted.

    BEST_AT_END evaluates a job's best checkpoint, usually an earlier one than the final; only the
    final carries the stop reason, so a cancelled job's best would otherwise look fully trained
    and be promoted automatically although somebody stopped the run on purpose."""
    rows = [checkpoint]
    if checkpoint.training_job:
        rows += repo.list_checkpoints(
            checkpoint.model, before_seq=None, limit=10_000, training_job=checkpoint.training_job
        )
    return any(protos.checkpoint_facts(row).training_interrupted for row in rows)


def _place_in_job(row: CheckpointRow) -> CheckpointOfJob:
    facts = protos.checkpoint_facts(row)
    return CheckpointOfJob(training_job=facts.training_job, validation_loss=facts.validation_loss)


def attach_evaluation(  # noqa: PLR0917
    repo: RegistryRepository,
    deps: RegistryDeps,
    model: ModelRow,
    checkpoint: CheckpointRow,
    event: CompletedEvaluation,
    now: datetime,
) -> None:
    if repo.get_evaluation(checkpoint.name, event.evaluation) is not None:
        return
    complete_time = event.event_time or now
    baseline = _baseline_in_registry(repo, model.name, event)
    verdict = event.verdict
    is_latest = (
        checkpoint.latest_evaluation_time is None
        or complete_time >= checkpoint.latest_evaluation_time
    )
    if is_latest:
        checkpoint.verdict = verdict.value
        checkpoint.latest_evaluation_time = complete_time
        if event.parity_checked:
            releases.keep_merged_release(checkpoint, event.merged_release)
    production = repo.production_checkpoint(model.name)
    production_row = repo.get_checkpoint(production) if production else None
    outcome = decide_on_evaluation(
        EvaluationFacts(
            policy=PromotionPolicy(model.promotion_policy),
            verdict=verdict,
            comparisons=list(event.comparisons),
            baseline_checkpoint=baseline,
            production_checkpoint=production,
            candidate_checkpoint=checkpoint.name,
            candidate_rolled_back=checkpoint.rolled_back,
            candidate_review=ReviewState(checkpoint.review_state),
            is_latest_evaluation=is_latest,
            candidate_training_interrupted=_job_interrupted(repo, checkpoint),
            candidate_job=_place_in_job(checkpoint),
            production_job=_place_in_job(production_row) if production_row else None,
            parity_failure=event.parity_failure,
        )
    )
    freeze = repo.rollback_breaker(model.name)
    if outcome.decision is Decision.PROMOTE and freeze is not None and freeze.frozen:
        outcome = EvaluationOutcome(
            Decision.HOLD,
            f"{outcome.reason}; not promoted: {freeze.reason} (promote by hand, or "
            "UnfreezeAutomation)",
        )
    unverified = (
        unverified_artifact(deps, checkpoint) if outcome.decision is Decision.PROMOTE else ""
    )
    if unverified:
        outcome = EvaluationOutcome(
            Decision.HOLD,
            f"{outcome.reason}; not promoted: artifact verification failed: {unverified}",
        )
    repo.add_evaluation(
        EvaluationRow(
            checkpoint=checkpoint.name,
            evaluation=event.evaluation,
            verdict=verdict.value,
            complete_time=complete_time,
            record=protos.evaluation_record_with_baseline(event.record, baseline),
            decision=outcome.decision.value,
            decision_reason=outcome.reason,
        )
    )
    log.info(
        "evaluation attached",
        extra={
            "checkpoint": checkpoint.name,
            "evaluation": event.evaluation,
            "verdict": verdict.value,
            "decision": outcome.decision.value,
            "why": outcome.reason,
        },
    )
    if outcome.decision is Decision.PROMOTE:
        move_production_forward(
            repo,
            deps,
            model,
            checkpoint,
            trigger=MoveTrigger.PROMOTION,
            actor=SERVICE_ACTOR,
            reason=f"{event.evaluation} passed: {outcome.reason}",
            cause=event.evaluation,
            trigger_time=complete_time,
            evaluation=event.evaluation,
            now=now,
        )
    elif outcome.decision is Decision.AWAIT_REVIEW:
        checkpoint.review_state = ReviewState.PENDING.value
        candidate = repo.get_alias(model.name, CANDIDATE)
        if candidate is None or candidate.checkpoint != checkpoint.name:
            repo.move_alias(
                model=model.name,
                alias=CANDIDATE,
                to_checkpoint=checkpoint,
                trigger=MoveTrigger.PROMOTION,
                actor=SERVICE_ACTOR,
                reason=f"{event.evaluation} passed; awaiting review",
                cause=event.evaluation,
                trigger_time=complete_time,
                now=now,
            )
            notify_moved(repo.session, deps)


def _untrusted_evaluation(deps: RegistryDeps, message: CompletedEvaluation) -> str:
    """Why the registry will not take this EvaluationCompleted, or "" when it will.

    Its merged release model must lie in the evaluator's artifact area, and a PASSED verdict
    (one that can move production) must be confirmed by the evaluator itself; an evaluator
    that cannot be asked now raises TransientError, so the consumer retries the event. Refusals
    are logged and counted at once: the caller records the event REFUSED and moves nothing.
    """
    outside = (
        deps.artifacts.release_location_problem(message.merged_release.artifact_uri)
        if deps.artifacts
        else ""
    )
    if outside:
        artifact_refused(deps, message.model, message.checkpoint, RELEASE_LOCATION, outside)
        return outside
    if deps.verdicts is None or message.verdict is not Verdict.PASSED:
        return ""
    check, why = deps.verdicts.problem(message)
    if check:
        log.error(
            "verdict refused: the evaluator does not confirm it",
            extra={
                "model": message.model,
                "evaluation": message.evaluation,
                "checkpoint": message.checkpoint,
                "check": check,
                "why": why,
            },
        )
        if deps.metrics:
            deps.metrics.verdicts_refused.labels(message.model.removeprefix("models/"), check).inc()
    return why


def on_evaluation_completed(
    session: Session,
    deps: RegistryDeps,
    message: CompletedEvaluation,
    *,
    event_id: str,
) -> None:
    """Attach an evaluation to its checkpoint and act on it (promote, or set the candidate).

    An evaluation of a checkpoint the registry has not registered yet (its CheckpointReady is
    on another topic, so it may arrive later) is PARKED and attached at registration. One whose
    merged release lies outside the evaluator's artifact area, or whose PASSED verdict the
    evaluator does not confirm, is REFUSED (:func:`_untrusted_evaluation`).
    """
    repo = RegistryRepository(session)
    now = deps.clock()
    # asked before the model's lock is taken: the evaluator's answer may take a while
    refusal = _untrusted_evaluation(deps, message)
    if refusal:
        defer(
            repo,
            deps,
            model=message.model,
            source_checkpoint=message.checkpoint,
            event_type=EVALUATION_COMPLETED,
            event_id=event_id,
            payload=message.payload,
            status=REFUSED,
            reason=refusal,
            now=now,
        )
        return
    model = repo.lock_model(message.model)
    checkpoint = repo.get_checkpoint_by_source(message.model, message.checkpoint) if model else None
    if model is None or checkpoint is None:
        defer(
            repo,
            deps,
            model=message.model,
            source_checkpoint=message.checkpoint,
            event_type=EVALUATION_COMPLETED,
            event_id=event_id,
            payload=message.payload,
            status=PARKED,
            reason="the checkpoint is not registered (yet)",
            now=now,
        )
        return
    attach_evaluation(repo, deps, model, checkpoint, message, now)


def move_production_forward(
    repo: RegistryRepository,
    deps: RegistryDeps,
    model: ModelRow,
    checkpoint: CheckpointRow,
    *,
    trigger: MoveTrigger,
    actor: str,
    reason: str,
    cause: str,
    trigger_time: datetime,
    evaluation: str,
    now: datetime,
) -> AliasMoveRow:
    """Promotion, approval or an explicit move of production: alias + history + ModelPromoted."""
    move = repo.move_alias(
        model=model.name,
        alias=PRODUCTION,
        to_checkpoint=checkpoint,
        trigger=trigger,
        actor=actor,
        reason=reason,
        cause=cause,
        trigger_time=trigger_time,
        now=now,
    )
    stage_event(
        repo.session,
        protos.model_promoted(model, checkpoint, move, evaluation),
        source=deps.source,
        subject=model.name,
    )
    notify_moved(repo.session, deps)
    if deps.metrics:
        metrics = deps.metrics
        after_commit(
            repo.session, lambda: metrics.record_promotion(model.name, trigger.value.lower())
        )
    log.info(
        "production moved",
        extra={"model": model.name, "to": checkpoint.name, "trigger": trigger.value},
    )
    return move
