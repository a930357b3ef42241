"""One function per registry command or event, taking its dependencies as parameters.

Every function runs inside the caller's transaction (``session``): the gRPC servicer and the
webhook open one per request, the consumer loop one per event. State changes, the alias
history row and the event announcing the move (``stage_event``, the outbox) commit together
or not at all. Alias-moving functions take the model's write lock first
(:meth:`RegistryRepository.lock_model`), so triggers racing for one model run one after the
other. Side effects outside the database (metrics, waking WatchAlias streams and the outbox
relay) run only after the commit (:func:`after_commit`).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.registry import releases
from services.registry.adapters.artifact_checks import CONTENT, LOCATION, ArtifactVerifier
from services.registry.adapters.commit_hooks import after_commit
from services.registry.adapters.metrics import RegistryMetrics
from services.registry.adapters.notifier import AliasMoveNotifier
from services.registry.adapters.repository import APPLIED, PARKED, REFUSED, RegistryRepository
from services.registry.adapters.resources import (
    alias_to_proto,
    checkpoint_to_proto,
    model_to_proto,
    move_to_proto,
    policy_from_proto,
    trigger_to_proto,
    verdict_from_proto,
)
from services.registry.adapters.tables import (
    AliasMoveRow,
    CheckpointRow,
    EvaluationRow,
    LiveCountsRow,
    LiveQualityRow,
    ModelRow,
    RegressionRow,
    RollbackBreakerRow,
    TriggerKeyRow,
)
from services.registry.domain import (
    ALERTMANAGER_ACTOR,
    ALL_ALIASES,
    CANDIDATE,
    PRODUCTION,
    RESOURCE_ID,
    SERVICE_ACTOR,
    AlertNotice,
    CheckpointOfJob,
    Comparison,
    Decision,
    EvaluationFacts,
    EvaluationOutcome,
    LiveQuality,
    LiveQualityRule,
    MoveTrigger,
    PromotionPolicy,
    ReviewState,
    RollbackAlertPolicy,
    RollbackBreaker,
    Verdict,
    alert_concerns_production,
    alias_name,
    checkpoint_name,
    choose_rollback_target,
    decide_on_evaluation,
    higher_is_better,
    is_past_floor,
    judge_live_quality,
    model_name,
    parse_alias_name,
    parse_checkpoint_name,
    parse_model_name,
    registry_checkpoint_id,
)
from services.registry.validation import floor_of, validate_new_model
from shared.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
)
from shared.events import stage_event
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size
from shared.protobuf import datetime_from_timestamp, set_timestamp
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2
from tuneline.registry.v1 import events_pb2, resources_pb2, service_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2

log = logging.getLogger(__name__)

MAX_REASON = 1000
_GATED_OUTCOMES = (
    common_pb2.COMPARISON_OUTCOME_WITHIN_TOLERANCE,
    common_pb2.COMPARISON_OUTCOME_REGRESSED,
)
_CHECKPOINT_READY = trainer_events.CheckpointReady.DESCRIPTOR.full_name
#: CheckpointReady stop reasons of a partly trained adapter: never promoted automatically.
_INTERRUPTED_TRAINING = frozenset(
    {trainer_pb2.TRAINING_STOP_REASON_CANCELLED, trainer_pb2.TRAINING_STOP_REASON_FAILED}
)
_EVALUATION_COMPLETED = evaluator_events.EvaluationCompleted.DESCRIPTOR.full_name


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class RegistryDeps:
    """What the handlers need besides the session."""

    source: str = "tuneline/registry"
    metrics: RegistryMetrics | None = None
    notifier: AliasMoveNotifier = field(default_factory=AliasMoveNotifier)
    #: Called after a commit that staged events (the outbox relay's ``wake``).
    wake_relay: Callable[[], None] = lambda: None
    clock: Callable[[], datetime] = _utcnow
    #: How counted live quality is judged (TUNELINE_REGISTRY_LIVE_QUALITY_*).
    live_quality: LiveQualityRule = field(default_factory=LiveQualityRule)
    #: Automatic rollbacks allowed per model and window (TUNELINE_REGISTRY_AUTO_ROLLBACK_*).
    rollback_breaker: RollbackBreaker = field(default_factory=RollbackBreaker)
    #: Alerts that may roll back (TUNELINE_REGISTRY_ROLLBACK_ALERT_NAMES).
    rollback_alerts: RollbackAlertPolicy = field(default_factory=RollbackAlertPolicy)
    #: Checks checkpoint artifacts at their source (the trainer's artifact root, a re-hash
    #: before a move); None trusts the events (TUNELINE_REGISTRY_VERIFY_ARTIFACTS=false).
    artifacts: ArtifactVerifier | None = None


# -- small helpers ----------------------------------------------------------------------------


def _require_text(value: str, field_name: str, *, limit: int = MAX_REASON) -> list[FieldViolation]:
    if not value.strip():
        return [FieldViolation(field_name, "required", "REQUIRED")]
    if len(value) > limit:
        return [FieldViolation(field_name, f"at most {limit} characters", "TOO_LONG")]
    return []


def _optional_text(value: str, field_name: str, *, limit: int) -> list[FieldViolation]:
    if len(value) > limit:
        return [FieldViolation(field_name, f"at most {limit} characters", "TOO_LONG")]
    return []


def _raise_if(problems: list[FieldViolation], message: str) -> None:
    if problems:
        raise InvalidArgument(message, problems)


def _request_key(kind: str, request_id: str) -> str:
    """The trigger key recording a request id of one kind of RPC ("" without one)."""
    return f"{kind}:{request_id}" if request_id else ""


def _earlier_request(
    repo: RegistryRepository, model: str, key: str, subject: str
) -> TriggerKeyRow | None:
    """The record of a request already applied with ``key`` (its ``outcome`` is its subject).

    INVALID_ARGUMENT when the key was used for a request about another subject: a client bug
    that must not pass for a retry.
    """
    if not key:
        return None
    earlier = repo.trigger_key(model, key)
    if earlier is not None and earlier.outcome != subject:
        raise InvalidArgument(
            "request_id was already used for another request",
            [
                FieldViolation(
                    "request_id", f"already used for {earlier.outcome}", "REQUEST_ID_REUSED"
                )
            ],
        )
    return earlier


def _locked_model(repo: RegistryRepository, name: str) -> ModelRow:
    row = repo.lock_model(name)
    if row is None:
        raise NotFound("model", name)
    return row


def _checkpoint_in(repo: RegistryRepository, name: str) -> CheckpointRow:
    row = repo.get_checkpoint(name)
    if row is None:
        raise NotFound("checkpoint", name)
    return row


def _model_proto(repo: RegistryRepository, row: ModelRow) -> resources_pb2.Model:
    model = model_to_proto(row, repo.aliases_of_model(row.name))
    freeze = repo.rollback_breaker(row.name)
    if freeze is not None and freeze.frozen and freeze.freeze_time is not None:
        model.automation_freeze.CopyFrom(
            resources_pb2.AutomationFreeze(
                reason=freeze.reason,
                cause=freeze.cause,
                automatic_rollbacks=freeze.automatic_rollbacks,
            )
        )
        set_timestamp(model.automation_freeze.freeze_time, freeze.freeze_time)
    return model


def _checkpoint_proto(repo: RegistryRepository, row: CheckpointRow) -> resources_pb2.Checkpoint:
    evaluations = repo.evaluations_of([row.name])[row.name]
    aliases = repo.aliases_pointing_at([row.name]).get(row.name, [])
    return checkpoint_to_proto(row, evaluations, aliases)


def alias_state(repo: RegistryRepository, model: str, alias: str) -> resources_pb2.Alias:
    """An alias now (``revision`` 0 and no checkpoint when never set)."""
    row = repo.get_alias(model, alias)
    checkpoint = repo.get_checkpoint(row.checkpoint) if row else None
    last_move = repo.last_move(model, alias) if row else None
    return alias_to_proto(
        model,
        alias,
        checkpoint=checkpoint,
        revision=row.revision if row else 0,
        last_move=last_move,
    )


def alias_after_move(repo: RegistryRepository, move: AliasMoveRow) -> resources_pb2.Alias:
    """The alias as it was right after ``move`` (what WatchAlias sends with each move)."""
    return alias_to_proto(
        move.model,
        move.alias,
        checkpoint=repo.get_checkpoint(move.to_checkpoint),
        revision=move.revision,
        last_move=move,
    )


def _notify_moved(session: Session, deps: RegistryDeps) -> None:
    after_commit(session, deps.notifier.notify)
    after_commit(session, deps.wake_relay)


# -- models -----------------------------------------------------------------------------------


def create_model(
    session: Session,
    deps: RegistryDeps,
    model_id: str,
    model: resources_pb2.Model | None,
    *,
    request_id: str = "",
) -> resources_pb2.Model:
    """CreateModel: validate, store, then register checkpoints that were waiting for it.

    A repeated ``request_id`` returns the model its first request created.
    """
    _raise_if(_optional_text(request_id, "request_id", limit=200), "the model is invalid")
    resolved = validate_new_model(model_id, model)
    name = model_name(model_id)
    repo = RegistryRepository(session)
    key = _request_key("create", request_id)
    existing = repo.get_model(name)
    if existing is not None:
        if _earlier_request(repo, name, key, name) is not None:
            return _model_proto(repo, existing)
        raise AlreadyExists("model", name)
    now = deps.clock()
    row = ModelRow(
        name=name,
        task_type=resolved.task_type,
        promotion_policy=policy_from_proto(resolved.promotion_policy).value,
        definition=resolved.SerializeToString(deterministic=True),
        lock_version=0,
        create_time=now,
        update_time=now,
    )
    try:
        repo.add_model(row)
    except IntegrityError:  # created concurrently since the check above
        raise AlreadyExists("model", name) from None
    if key:
        repo.record_trigger_key(name, key, outcome=name, move=None, now=now)
    for parked in repo.parked_events(name, _CHECKPOINT_READY):
        message = trainer_events.CheckpointReady.FromString(parked.payload)
        parked.status, parked.reason = _register_checkpoint(repo, deps, row, message, now)
    return _model_proto(repo, row)


def set_serving_profile(
    session: Session, deps: RegistryDeps, request: service_pb2.SetServingProfileRequest
) -> resources_pb2.Model:
    """SetServingProfile: the next parity checks lint against the new profile."""
    return releases.set_serving_profile(RegistryRepository(session), request, deps.clock())


def get_model(session: Session, name: str) -> resources_pb2.Model:
    parse_model_name(name)
    repo = RegistryRepository(session)
    row = repo.get_model(name)
    if row is None:
        raise NotFound("model", name)
    return _model_proto(repo, row)


def list_models(
    session: Session, page_size: int, page_token: str
) -> tuple[list[resources_pb2.Model], str]:
    size = resolve_page_size(page_size)
    after = decode_page_token(page_token, {})
    repo = RegistryRepository(session)
    rows = repo.list_models(after_name=str(after[0]) if after else None, limit=size + 1)
    page = rows[:size]
    token = encode_page_token({}, [page[-1].name]) if len(rows) > size else ""
    return [_model_proto(repo, row) for row in page], token


# -- checkpoints ------------------------------------------------------------------------------


def _base_model_mismatch(
    model_base: common_pb2.BaseModel, lineage_base: common_pb2.BaseModel
) -> str:
    """Why a checkpoint's base model is not the model's, or ``""`` when it is."""
    source = model_base.WhichOneof("source")
    if lineage_base.WhichOneof("source") is None:
        return ""  # the trainer always sets it; an older producer may not: don't refuse on that
    if source and getattr(model_base, source) != getattr(lineage_base, source, ""):
        return (
            f"trained on {lineage_base.WhichOneof('source')}="
            f"{getattr(lineage_base, lineage_base.WhichOneof('source') or '')!r}, "
            f"the model's base is {source}={getattr(model_base, source)!r}"
        )
    if (
        model_base.files_sha256
        and lineage_base.files_sha256
        and model_base.files_sha256 != lineage_base.files_sha256
    ):
        return "the base model's files_sha256 differs from the model's"
    return ""


def _register_checkpoint(
    repo: RegistryRepository,
    deps: RegistryDeps,
    model: ModelRow,
    message: trainer_events.CheckpointReady,
    now: datetime,
) -> tuple[str, str]:
    """Register one CheckpointReady under ``model``; returns (deferred status, reason)."""
    if repo.get_checkpoint_by_source(model.name, message.checkpoint) is not None:
        return APPLIED, "already registered"  # CheckpointReady repeats across resumes
    definition = resources_pb2.Model.FromString(model.definition)
    if message.lineage.task_type and message.lineage.task_type != model.task_type:
        reason = (
            f"task type {common_pb2.TaskType.Name(message.lineage.task_type)} is not the "
            f"model's {common_pb2.TaskType.Name(definition.task_type)}"
        )
        log.warning("checkpoint refused", extra={"checkpoint": message.checkpoint, "why": reason})
        return REFUSED, reason
    mismatch = _base_model_mismatch(definition.base_model, message.lineage.base_model)
    if mismatch:
        log.warning("checkpoint refused", extra={"checkpoint": message.checkpoint, "why": mismatch})
        return REFUSED, mismatch
    outside = deps.artifacts.location_problem(message.artifact_uri) if deps.artifacts else ""
    if outside:
        _artifact_refused(deps, model.name, message.checkpoint, LOCATION, outside)
        return REFUSED, outside
    name = checkpoint_name(
        model.name.removeprefix("models/"), registry_checkpoint_id(message.checkpoint)
    )
    record = resources_pb2.Checkpoint(
        name=name,
        source_checkpoint=message.checkpoint,
        training_job=message.training_job,
        step=message.step,
        epoch=message.epoch,
        train_loss=message.train_loss,
        tokens_seen=message.tokens_seen,
        artifact_uri=message.artifact_uri,
        sha256=message.sha256,
        size_bytes=message.size_bytes,
        lineage=message.lineage,
        cost=message.cost,
        training_interrupted=message.stop_reason in _INTERRUPTED_TRAINING,
    )
    if message.HasField("validation_loss"):
        record.validation_loss = message.validation_loss
    if message.HasField("tokenizer_fingerprint"):
        record.tokenizer_fingerprint.CopyFrom(message.tokenizer_fingerprint)
    row = CheckpointRow(
        name=name,
        model=model.name,
        source_checkpoint=message.checkpoint,
        training_job=message.training_job,
        sha256=message.sha256,
        record=record.SerializeToString(deterministic=True),
        verdict=Verdict.UNSPECIFIED.value,
        review_state=ReviewState.NOT_REQUIRED.value,
        reviewer="",
        review_reason="",
        ever_production=False,
        rolled_back=False,
        create_time=datetime_from_timestamp(message, "event_time") or now,
    )
    repo.add_checkpoint(row)
    if deps.metrics:
        metrics = deps.metrics
        after_commit(
            repo.session,
            lambda: metrics.checkpoints_registered.labels(model.name.removeprefix("models/")).inc(),
        )
    # evaluations that arrived before the checkpoint (different topics are not ordered)
    for parked in repo.parked_events(
        model.name, _EVALUATION_COMPLETED, source_checkpoint=message.checkpoint
    ):
        evaluation = evaluator_events.EvaluationCompleted.FromString(parked.payload)
        _attach_evaluation(repo, deps, model, row, evaluation, now)
        parked.status, parked.reason = APPLIED, f"attached to {name}"
    return APPLIED, f"registered as {name}"


def _artifact_refused(
    deps: RegistryDeps, model: str, checkpoint: str, check: str, why: str
) -> None:
    """Log and count an artifact the registry will not trust (counted at once: a refused
    promotion rolls its transaction back, and the refusal still happened)."""
    log.error(
        "checkpoint artifact refused",
        extra={"model": model, "checkpoint": checkpoint, "check": check, "why": why},
    )
    if deps.metrics:
        deps.metrics.artifacts_refused.labels(model.removeprefix("models/"), check).inc()


def _unverified_artifact(deps: RegistryDeps, checkpoint: CheckpointRow) -> str:
    """Why the checkpoint's artifact is not the one its record names (re-hashed now), or ""."""
    if deps.artifacts is None:
        return ""
    record = resources_pb2.Checkpoint.FromString(checkpoint.record)
    problem = deps.artifacts.content_problem(record.artifact_uri, record.sha256)
    if problem:
        _artifact_refused(deps, checkpoint.model, checkpoint.name, CONTENT, problem)
    return problem


def _refuse_unverified_artifact(deps: RegistryDeps, checkpoint: CheckpointRow) -> None:
    """FAILED_PRECONDITION unless the checkpoint's artifact re-hashes to its recorded sha256."""
    problem = _unverified_artifact(deps, checkpoint)
    if problem:
        raise FailedPrecondition(
            f"{checkpoint.name} cannot be promoted: its artifact failed verification: {problem}",
            [PreconditionViolation("ARTIFACT_UNVERIFIED", checkpoint.name, problem)],
        )


def _defer(
    repo: RegistryRepository,
    deps: RegistryDeps,
    *,
    model: str,
    source_checkpoint: str,
    event_type: str,
    event_id: str,
    payload: bytes,
    status: str,
    reason: str,
    now: datetime,
) -> None:
    repo.defer_event(
        model=model,
        source_checkpoint=source_checkpoint,
        event_type=event_type,
        event_id=event_id,
        payload=payload,
        status=status,
        reason=reason,
        now=now,
    )
    log.warning(
        "event deferred",
        extra={"event_type": event_type, "model": model, "status": status, "why": reason},
    )
    if deps.metrics:
        metrics = deps.metrics
        after_commit(repo.session, lambda: metrics.events_deferred.labels(event_type, status).inc())


def on_checkpoint_ready(
    session: Session,
    deps: RegistryDeps,
    message: trainer_events.CheckpointReady,
    *,
    event_id: str,
) -> None:
    """Register a checkpoint with its lineage.

    A checkpoint for a model that does not exist (yet) is neither dropped nor dead-lettered
    (the event is valid; the model may be created after training started) and no model is
    invented for it (a model needs its evaluation set and gate): it is PARKED and registered
    the moment CreateModel creates the model. One whose task type or base model contradicts
    the model is REFUSED and recorded with the reason.
    """
    repo = RegistryRepository(session)
    now = deps.clock()
    payload = message.SerializeToString(deterministic=True)
    common = {
        "model": message.target_model,
        "source_checkpoint": message.checkpoint,
        "event_type": _CHECKPOINT_READY,
        "event_id": event_id,
        "payload": payload,
        "now": now,
    }
    try:
        registry_checkpoint_id(message.checkpoint)
        parse_model_name(message.target_model, field="target_model")
    except (ValueError, InvalidArgument) as error:
        _defer(repo, deps, status=REFUSED, reason=str(error), **common)  # type: ignore[arg-type]
        return
    model = repo.lock_model(message.target_model)
    if model is None:
        _defer(repo, deps, status=PARKED, reason="the model does not exist (yet)", **common)  # type: ignore[arg-type]
        # CreateModel may have committed between the lock attempt and the park (the park's
        # INSERT now holds the write lock): register at once rather than strand the row.
        model = repo.lock_model(message.target_model)
        if model is None:
            return
        for parked in repo.parked_events(
            model.name, _CHECKPOINT_READY, source_checkpoint=message.checkpoint
        ):
            parked.status, parked.reason = _register_checkpoint(repo, deps, model, message, now)
        return
    status, reason = _register_checkpoint(repo, deps, model, message, now)
    if status == REFUSED:
        _defer(repo, deps, status=REFUSED, reason=reason, **common)  # type: ignore[arg-type]


def get_checkpoint(session: Session, name: str) -> resources_pb2.Checkpoint:
    parse_checkpoint_name(name)
    repo = RegistryRepository(session)
    return _checkpoint_proto(repo, _checkpoint_in(repo, name))


def list_checkpoints(
    session: Session, request: service_pb2.ListCheckpointsRequest
) -> tuple[list[resources_pb2.Checkpoint], str]:
    parse_model_name(request.parent, field="parent")
    size = resolve_page_size(request.page_size)
    query = {
        "parent": request.parent,
        "verdict": str(request.verdict),
        "review_state": str(request.review_state),
        "training_job": request.training_job,
    }
    after = decode_page_token(request.page_token, query)
    repo = RegistryRepository(session)
    if repo.get_model(request.parent) is None:
        raise NotFound("model", request.parent)
    review = request.review_state
    rows = repo.list_checkpoints(
        request.parent,
        before_seq=int(after[0]) if after else None,
        limit=size + 1,
        verdict=verdict_from_proto(request.verdict).value if request.verdict else "",
        review_state=resources_pb2.ReviewState.Name(review).removeprefix("REVIEW_STATE_")
        if review
        else "",
        training_job=request.training_job,
    )
    page = rows[:size]
    evaluations = repo.evaluations_of([r.name for r in page])
    aliases = repo.aliases_pointing_at(r.name for r in page)
    token = encode_page_token(query, [page[-1].seq]) if len(rows) > size else ""
    return [
        checkpoint_to_proto(r, evaluations[r.name], aliases.get(r.name, [])) for r in page
    ], token


# -- evaluations and promotion ----------------------------------------------------------------


def _comparisons(event: evaluator_events.EvaluationCompleted) -> list[Comparison]:
    return [
        Comparison(
            metric=c.metric,
            slice=c.slice,
            evaluation_set=c.evaluation_set,
            delta=c.delta,
            ci_lower=c.delta_ci_lower,
            ci_upper=c.delta_ci_upper,
            higher_is_better=c.higher_is_better,
            gated=c.outcome
            in (
                common_pb2.COMPARISON_OUTCOME_WITHIN_TOLERANCE,
                common_pb2.COMPARISON_OUTCOME_REGRESSED,
            ),
            standard_error=c.standard_error,
            family_weight=c.family_weight,
            confidence_level=c.confidence_level,
        )
        for c in event.comparisons
    ]


def _baseline_in_registry(
    repo: RegistryRepository, model: str, event: evaluator_events.EvaluationCompleted
) -> str:
    """The registry name of the checkpoint the evaluation compared with ("" = base model)."""
    baseline = event.baseline
    if not event.HasField("baseline") or baseline.kind == evaluator_pb2.BASELINE_KIND_BASE_MODEL:
        return ""
    if baseline.checkpoint.startswith(f"{model}/checkpoints/"):
        return baseline.checkpoint
    if baseline.checkpoint:  # a trainer name: find what the registry calls it
        row = repo.get_checkpoint_by_source(model, baseline.checkpoint)
        if row is not None:
            return row.name
    return baseline.checkpoint or f"unknown checkpoint {baseline.checkpoint_sha256[:12]}"


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
    return any(resources_pb2.Checkpoint.FromString(row.record).training_interrupted for row in rows)


def _place_in_job(row: CheckpointRow) -> CheckpointOfJob:
    record = resources_pb2.Checkpoint.FromString(row.record)
    return CheckpointOfJob(
        training_job=record.training_job,
        validation_loss=record.validation_loss if record.HasField("validation_loss") else None,
    )


def _attach_evaluation(  # noqa: PLR0917
    repo: RegistryRepository,
    deps: RegistryDeps,
    model: ModelRow,
    checkpoint: CheckpointRow,
    event: evaluator_events.EvaluationCompleted,
    now: datetime,
) -> None:
    if repo.get_evaluation(checkpoint.name, event.evaluation) is not None:
        return
    complete_time = datetime_from_timestamp(event, "event_time") or now
    baseline = _baseline_in_registry(repo, model.name, event)
    verdict = verdict_from_proto(event.verdict)
    record = resources_pb2.CheckpointEvaluation(
        evaluation=event.evaluation,
        verdict=event.verdict,
        evaluation_set=event.evaluation_set,
        metrics=event.metrics,
        comparisons=event.comparisons,
        baseline_checkpoint=baseline,
        complete_time=event.event_time,
    )
    if event.HasField("parity"):
        record.parity.CopyFrom(event.parity)
    is_latest = (
        checkpoint.latest_evaluation_time is None
        or complete_time >= checkpoint.latest_evaluation_time
    )
    if is_latest:
        checkpoint.verdict = verdict.value
        checkpoint.latest_evaluation_time = complete_time
        releases.keep_merged_release(checkpoint, event.parity)
    production = repo.production_checkpoint(model.name)
    production_row = repo.get_checkpoint(production) if production else None
    outcome = decide_on_evaluation(
        EvaluationFacts(
            policy=PromotionPolicy(model.promotion_policy),
            verdict=verdict,
            comparisons=_comparisons(event),
            baseline_checkpoint=baseline,
            production_checkpoint=production,
            candidate_checkpoint=checkpoint.name,
            candidate_rolled_back=checkpoint.rolled_back,
            candidate_review=ReviewState(checkpoint.review_state),
            is_latest_evaluation=is_latest,
            candidate_training_interrupted=_job_interrupted(repo, checkpoint),
            candidate_job=_place_in_job(checkpoint),
            production_job=_place_in_job(production_row) if production_row else None,
            parity_failure=releases.parity_failure(event.parity),
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
        _unverified_artifact(deps, checkpoint) if outcome.decision is Decision.PROMOTE else ""
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
            record=record.SerializeToString(deterministic=True),
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
        _move_production_forward(
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
            _notify_moved(repo.session, deps)


def on_evaluation_completed(
    session: Session,
    deps: RegistryDeps,
    message: evaluator_events.EvaluationCompleted,
    *,
    event_id: str,
) -> None:
    """Attach an evaluation to its checkpoint and act on it (promote, or set the candidate).

    An evaluation of a checkpoint the registry has not registered yet (its CheckpointReady is
    on another topic, so it may arrive later) is PARKED and attached at registration.
    """
    repo = RegistryRepository(session)
    now = deps.clock()
    model = repo.lock_model(message.model)
    checkpoint = repo.get_checkpoint_by_source(message.model, message.checkpoint) if model else None
    if model is None or checkpoint is None:
        _defer(
            repo,
            deps,
            model=message.model,
            source_checkpoint=message.checkpoint,
            event_type=_EVALUATION_COMPLETED,
            event_id=event_id,
            payload=message.SerializeToString(deterministic=True),
            status=PARKED,
            reason="the checkpoint is not registered (yet)",
            now=now,
        )
        return
    _attach_evaluation(repo, deps, model, checkpoint, message, now)


def _stage_promoted(  # noqa: PLR0917
    repo: RegistryRepository,
    deps: RegistryDeps,
    model: ModelRow,
    checkpoint: CheckpointRow,
    move: AliasMoveRow,
    evaluation: str,
) -> None:
    record = resources_pb2.Checkpoint.FromString(checkpoint.record)
    stage_event(
        repo.session,
        events_pb2.ModelPromoted(
            model=model.name,
            alias=alias_name(model.name.removeprefix("models/"), PRODUCTION),
            from_checkpoint=move.from_checkpoint,
            to_checkpoint=move.to_checkpoint,
            trigger=trigger_to_proto(MoveTrigger(move.trigger)),
            actor=move.actor,
            reason=move.reason,
            evaluation=evaluation,
            revision=move.revision,
            artifact_uri=record.artifact_uri,
            sha256=record.sha256,
            base_model=record.lineage.base_model,
            task_type=model.task_type,  # type: ignore[arg-type]
            source_checkpoint=checkpoint.source_checkpoint,
            event_time=move_to_proto(move).move_time,
            **releases.release_fields(record),
        ),
        source=deps.source,
        subject=model.name,
    )


def _move_production_forward(
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
    _stage_promoted(repo, deps, model, checkpoint, move, evaluation)
    _notify_moved(repo.session, deps)
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


# -- explicit moves and reviews ---------------------------------------------------------------


def _revision_problems(expected: int | None) -> list[FieldViolation]:
    if expected is not None and expected < 0:
        return [FieldViolation("expected_alias_revision", "must be >= 0", "OUT_OF_RANGE")]
    return []


def _expected_revision(
    request: service_pb2.PromoteCheckpointRequest
    | service_pb2.ApproveCheckpointRequest
    | service_pb2.RollbackModelRequest,
) -> int | None:
    """The caller's ``expected_alias_revision``; ``None`` when it asks for no check."""
    if request.HasField("expected_alias_revision"):
        return request.expected_alias_revision
    return None


def _check_alias_revision(
    repo: RegistryRepository, model: str, alias: str, expected: int | None
) -> None:
    """Optimistic concurrency: ABORTED when the alias moved since the caller looked.

    Called with the model locked, so nothing can move between this check and the caller's move.
    """
    if expected is None:
        return
    row = repo.get_alias(model, alias)
    current = row.revision if row else 0
    if current == expected:
        return
    subject = f"{model}/aliases/{alias}"
    raise Aborted(
        f"{subject} is at revision {current}, not the expected {expected}: it moved since it "
        "was read; nothing changed (re-read the alias and decide again)",
        [
            PreconditionViolation(
                "ALIAS_REVISION_MISMATCH",
                subject,
                f"expected revision {expected}, current revision {current}",
            )
        ],
        metadata={
            "alias": subject,
            "expected_revision": str(expected),
            "current_revision": str(current),
            "current_checkpoint": row.checkpoint if row else "",
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
    if not RESOURCE_ID.match(alias):
        problems.append(
            FieldViolation("alias", f"{alias!r} is not a valid alias id", "INVALID_FORMAT")
        )
    _raise_if(problems, "the promotion request is invalid")
    repo = RegistryRepository(session)
    model = _locked_model(repo, model_name(model_id))
    checkpoint = _checkpoint_in(repo, request.checkpoint)
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


# -- rollback ---------------------------------------------------------------------------------


def _automation_frozen(
    repo: RegistryRepository, deps: RegistryDeps, model: ModelRow, cause: str
) -> bool:
    """Whether an automatic rollback of ``model`` must be refused by the circuit breaker.

    True when the model is frozen already, or when this rollback would exceed the breaker's
    limit (counting automatic rollbacks in the window since the last unfreeze and since a person
    last moved production): then the model freezes now (the caller holds its lock), which the
    ``tuneline_model_automation_frozen`` gauge and its alert show to a person.
    """
    state = repo.rollback_breaker(model.name)
    if state is not None and state.frozen:
        return True
    now = deps.clock()
    breaker = deps.rollback_breaker
    # rollbacks before an unfreeze, or before a person last moved production, were looked at
    since = max(
        moment
        for moment in (
            breaker.window_start(now),
            state.counted_since if state is not None else None,
            repo.last_move_by_a_person(model.name),
        )
        if moment is not None
    )
    recent = repo.automatic_rollbacks_since(model.name, since)
    if not breaker.trips(recent):
        return False
    repo.save_rollback_breaker(
        RollbackBreakerRow(
            model=model.name,
            frozen=True,
            freeze_time=now,
            reason=breaker.reason(recent),
            cause=cause[:300],
            automatic_rollbacks=recent,
            counted_since=state.counted_since if state is not None else None,
        )
    )
    log.error(
        "rollback circuit breaker tripped: automation frozen",
        extra={"model": model.name, "cause": cause, "automatic_rollbacks": recent},
    )
    return True


def unfreeze_automation(
    session: Session, deps: RegistryDeps, request: service_pb2.UnfreezeAutomationRequest
) -> resources_pb2.Model:
    """UnfreezeAutomation: automation may move the model's production again (no-op when it is
    not frozen). Automatic rollbacks are counted afresh from now on."""
    parse_model_name(request.model, field="model")
    problems = _require_text(request.reason, "reason")
    problems += _optional_text(request.actor, "actor", limit=200)
    problems += _optional_text(request.request_id, "request_id", limit=200)
    _raise_if(problems, "the unfreeze request is invalid")
    repo = RegistryRepository(session)
    model = _locked_model(repo, request.model)
    key = _request_key("unfreeze", request.request_id)
    if _earlier_request(repo, model.name, key, model.name) is None:
        state = repo.rollback_breaker(model.name)
        if state is not None and state.frozen:
            was = state.reason
            state.frozen = False
            state.counted_since = deps.clock()
            log.warning(
                "automation unfrozen",
                extra={
                    "model": model.name,
                    "actor": request.actor or "unknown",
                    "reason": request.reason,
                    "was": was,
                },
            )
        if key:
            repo.record_trigger_key(
                model.name, key, outcome=model.name, move=None, now=deps.clock()
            )
    session.flush()
    return _model_proto(repo, model)


@dataclass(frozen=True)
class RollbackTrigger:
    """Who or what asks for a rollback, and how to recognise the same request again."""

    trigger: MoveTrigger
    actor: str
    reason: str
    cause: str
    trigger_time: datetime
    #: Stored once acted on; a trigger with a stored key rolls back nothing.
    idempotency_key: str
    explicit_target: str = ""


def _roll_back(
    repo: RegistryRepository, deps: RegistryDeps, model: ModelRow, request: RollbackTrigger
) -> AliasMoveRow:
    """Move production back (caller holds the lock and checked the key); ModelRolledBack."""
    target_name = choose_rollback_target(
        repo.production_moves(model.name),
        model=model.name,
        rolled_back=repo.rolled_back_checkpoints(model.name),
        ever_production=repo.ever_production_checkpoints(model.name),
        explicit_target=request.explicit_target,
    )
    target = _checkpoint_in(repo, target_name)
    now = deps.clock()
    move = repo.move_alias(
        model=model.name,
        alias=PRODUCTION,
        to_checkpoint=target,
        trigger=request.trigger,
        actor=request.actor,
        reason=request.reason,
        cause=request.cause,
        trigger_time=request.trigger_time,
        now=now,
    )
    record = resources_pb2.Checkpoint.FromString(target.record)
    moved = move_to_proto(move)
    stage_event(
        repo.session,
        events_pb2.ModelRolledBack(
            model=model.name,
            alias=moved.alias,
            from_checkpoint=move.from_checkpoint,
            to_checkpoint=move.to_checkpoint,
            trigger=moved.trigger,
            actor=move.actor,
            reason=move.reason,
            cause=move.cause,
            revision=move.revision,
            artifact_uri=record.artifact_uri,
            sha256=record.sha256,
            base_model=record.lineage.base_model,
            task_type=model.task_type,  # type: ignore[arg-type]
            source_checkpoint=target.source_checkpoint,
            trigger_time=moved.trigger_time,
            event_time=moved.move_time,
            **releases.release_fields(record),
        ),
        source=deps.source,
        subject=model.name,
    )
    repo.record_trigger_key(
        model.name,
        request.idempotency_key,
        outcome=f"rolled back to {target.name}",
        move=move,
        now=now,
    )
    _notify_moved(repo.session, deps)
    if deps.metrics:
        metrics = deps.metrics
        seconds = (now - request.trigger_time).total_seconds()
        label = request.trigger.metric_label
        after_commit(repo.session, lambda: metrics.record_rollback(model.name, label, seconds))
    log.warning(
        "production rolled back",
        extra={
            "model": model.name,
            "from": move.from_checkpoint,
            "to": move.to_checkpoint,
            "trigger": request.trigger.value,
            "cause": request.cause,
        },
    )
    return move


def rollback_model(
    session: Session, deps: RegistryDeps, request: service_pb2.RollbackModelRequest
) -> tuple[resources_pb2.Alias, resources_pb2.AliasMove | None]:
    """RollbackModel: roll production back; FAILED_PRECONDITION (nothing changes) without target."""
    model_id = parse_model_name(request.model, field="model")
    problems = _require_text(request.reason, "reason")
    problems += _optional_text(request.actor, "actor", limit=200)
    problems += _optional_text(request.request_id, "request_id", limit=200)
    problems += _revision_problems(_expected_revision(request))
    if request.target_checkpoint:
        try:
            target_model, _ = parse_checkpoint_name(
                request.target_checkpoint, field="target_checkpoint"
            )
        except InvalidArgument as error:
            problems += error.violations
        else:
            if target_model != model_id:
                problems.append(
                    FieldViolation(
                        "target_checkpoint", f"not a checkpoint of {request.model}", "WRONG_MODEL"
                    )
                )
    _raise_if(problems, "the rollback request is invalid")
    repo = RegistryRepository(session)
    model = _locked_model(repo, request.model)
    now = deps.clock()
    key = f"rpc:{request.request_id}" if request.request_id else f"rpc:{uuid.uuid4()}"
    if repo.trigger_key(model.name, key) is not None:
        return alias_state(repo, model.name, PRODUCTION), None
    _check_alias_revision(repo, model.name, PRODUCTION, _expected_revision(request))
    move = _roll_back(
        repo,
        deps,
        model,
        RollbackTrigger(
            trigger=MoveTrigger.ROLLBACK_MANUAL,
            actor=request.actor or "unknown",
            reason=request.reason,
            cause=request.request_id or key.removeprefix("rpc:"),
            trigger_time=now,
            idempotency_key=key,
            explicit_target=request.target_checkpoint,
        ),
    )
    return alias_state(repo, model.name, PRODUCTION), move_to_proto(move)


def _production_row(repo: RegistryRepository, model: str) -> CheckpointRow | None:
    name = repo.production_checkpoint(model)
    return repo.get_checkpoint(name) if name else None


def on_regression_detected(
    session: Session, deps: RegistryDeps, message: evaluator_events.RegressionDetected
) -> str:
    """Roll back when the regressed checkpoint is production; otherwise just record it.

    Returns the outcome (also the metric label): ``rolled_back``, ``not_production``,
    ``no_rollback_target``, ``unknown_model``, ``duplicate`` or ``frozen`` (the rollback
    circuit breaker refused it).
    """
    repo = RegistryRepository(session)
    now = deps.clock()
    key = f"regression:{message.evaluation}"
    model = repo.lock_model(message.model)
    outcome, detail = "", ""
    if model is None:
        outcome, detail = "unknown_model", "the model is not registered"
    elif repo.trigger_key(model.name, key) is not None or repo.get_regression(message.evaluation):
        outcome = "duplicate"
    else:
        production = _production_row(repo, model.name)
        about_production = production is not None and (
            production.source_checkpoint == message.checkpoint
            or (bool(message.checkpoint_sha256) and production.sha256 == message.checkpoint_sha256)
        )
        if not about_production:
            outcome, detail = "not_production", "the regressed checkpoint is not production"
            repo.record_trigger_key(model.name, key, outcome=detail, move=None, now=now)
        elif _automation_frozen(repo, deps, model, cause=message.evaluation):
            outcome, detail = "frozen", "automation frozen by the rollback circuit breaker"
        else:
            where = f" in slice {message.slice!r}" if message.slice else ""
            reason = (
                f"{message.metric}{where} regressed by {message.delta:+.4f} "
                f"(baseline {message.baseline:.4f}, candidate {message.candidate:.4f}, "
                f"p={message.p_value:.3g}) in {message.evaluation}"
            )
            trigger_time = datetime_from_timestamp(message, "event_time") or now
            try:  # a refused rollback raises before writing anything
                move = _roll_back(
                    repo,
                    deps,
                    model,
                    RollbackTrigger(
                        trigger=MoveTrigger.ROLLBACK_REGRESSION,
                        actor=SERVICE_ACTOR,
                        reason=reason,
                        cause=message.evaluation,
                        trigger_time=trigger_time,
                        idempotency_key=key,
                    ),
                )
                outcome, detail = "rolled_back", f"rolled back to {move.to_checkpoint}"
            except FailedPrecondition as error:
                outcome, detail = "no_rollback_target", error.message
                log.error(
                    "regression in production but nothing to roll back to",
                    extra={"model": model.name, "evaluation": message.evaluation},
                )
    if outcome != "duplicate" and repo.get_regression(message.evaluation) is None:
        repo.add_regression(
            RegressionRow(
                evaluation=message.evaluation,
                model=message.model,
                source_checkpoint=message.checkpoint,
                metric=message.metric,
                slice=message.slice,
                delta=message.delta,
                p_value=message.p_value,
                outcome=f"{outcome}: {detail}" if detail else outcome,
                received_at=now,
            )
        )
    if deps.metrics:
        metrics, label = deps.metrics, message.model.removeprefix("models/")
        after_commit(session, lambda: metrics.regressions.labels(label, outcome).inc())
    return outcome


def on_alert(session: Session, deps: RegistryDeps, notice: AlertNotice) -> str:  # noqa: PLR0911
    """Act on one alert of an Alertmanager notification; returns the outcome.

    Outcomes: ``rolled_back``, ``resolved`` (resolved alerts do nothing), ``no_model_label``,
    ``unknown_model``, ``duplicate`` (this incident rolled back already), ``not_production``
    (the alert is about a checkpoint that is no longer production), ``no_rollback_target``,
    ``frozen`` (the rollback circuit breaker refused it; see :func:`_automation_frozen`),
    ``ignored`` (not labelled ``action="rollback"``, or not on the allow-list: nothing done).
    """
    if not notice.firing:
        return "resolved"
    ignored = deps.rollback_alerts.why_ignored(notice)
    if ignored:
        log.warning(
            "alert ignored: it may not roll back",
            extra={
                "fingerprint": notice.fingerprint,
                "alertname": notice.alertname,
                "model": notice.model_id,
                "why": ignored,
            },
        )
        return "ignored"
    if not notice.model_id:
        return "no_model_label"
    repo = RegistryRepository(session)
    model = repo.lock_model(model_name(notice.model_id))
    if model is None:
        return "unknown_model"
    if repo.trigger_key(model.name, notice.idempotency_key) is not None:
        return "duplicate"
    production = repo.get_alias(model.name, PRODUCTION)
    concerns, why = alert_concerns_production(
        notice,
        production_checkpoint_id=production.checkpoint.rsplit("/", 1)[-1] if production else "",
        production_since=production.update_time if production else None,
    )
    if not concerns:
        repo.record_trigger_key(
            model.name, notice.idempotency_key, outcome=why, move=None, now=deps.clock()
        )
        return "not_production"
    if _automation_frozen(repo, deps, model, cause=notice.cause):
        # no key recorded: once a person unfreezes, a still firing alert acts again
        return "frozen"
    try:  # a refused rollback raises before writing anything
        _roll_back(
            repo,
            deps,
            model,
            RollbackTrigger(
                trigger=MoveTrigger.ROLLBACK_ALERT,
                actor=ALERTMANAGER_ACTOR,
                reason=notice.reason,
                cause=notice.cause,
                trigger_time=notice.starts_at,
                idempotency_key=notice.idempotency_key,
            ),
        )
    except FailedPrecondition as error:
        log.error(
            "alert about production but nothing to roll back to",
            extra={"model": model.name, "fingerprint": notice.fingerprint, "why": error.message},
        )
        return "no_rollback_target"
    return "rolled_back"


# -- aliases ----------------------------------------------------------------------------------


def get_alias(session: Session, name: str) -> resources_pb2.Alias:
    model_id, alias = parse_alias_name(name)
    repo = RegistryRepository(session)
    if repo.get_model(model_name(model_id)) is None:
        raise NotFound("model", model_name(model_id))
    return alias_state(repo, model_name(model_id), alias)


def list_alias_history(
    session: Session, request: service_pb2.ListAliasHistoryRequest
) -> tuple[list[resources_pb2.AliasMove], str]:
    model_id, alias = parse_alias_name(request.name, allow_all=True)
    size = resolve_page_size(request.page_size)
    query = {"name": request.name}
    after = decode_page_token(request.page_token, query)
    repo = RegistryRepository(session)
    if repo.get_model(model_name(model_id)) is None:
        raise NotFound("model", model_name(model_id))
    rows = repo.list_moves(
        model_name(model_id),
        None if alias == ALL_ALIASES else alias,
        after_seq=int(after[0]) if after else None,
        limit=size + 1,
    )
    page = rows[:size]
    token = encode_page_token(query, [page[-1].seq]) if len(rows) > size else ""
    return [move_to_proto(r) for r in page], token


def watch_alias_start(
    session: Session, name: str, after_revision: int
) -> tuple[str, str, list[service_pb2.WatchAliasResponse], int]:
    """The first messages of WatchAlias and the revision the stream continues after."""
    model_id, alias = parse_alias_name(name)
    if after_revision < 0:
        raise InvalidArgument(
            "after_revision must not be negative",
            [FieldViolation("after_revision", "must be >= 0", "OUT_OF_RANGE")],
        )
    model = model_name(model_id)
    repo = RegistryRepository(session)
    if repo.get_model(model) is None:
        raise NotFound("model", model)
    if after_revision == 0:
        state = alias_state(repo, model, alias)
        return model, alias, [service_pb2.WatchAliasResponse(alias=state)], state.revision
    moves = watch_alias_moves(session, model, alias, after_revision)
    last = moves[-1].move.revision if moves else after_revision
    return model, alias, moves, last


def watch_alias_moves(
    session: Session, model: str, alias: str, after_revision: int
) -> list[service_pb2.WatchAliasResponse]:
    """Every move of the alias after ``after_revision``, oldest first, with the alias after it."""
    repo = RegistryRepository(session)
    return [
        service_pb2.WatchAliasResponse(alias=alias_after_move(repo, move), move=move_to_proto(move))
        for move in repo.moves_after_revision(model, alias, after_revision)
    ]


# -- live quality -----------------------------------------------------------------------------


def _check_live_quality_request(
    request: service_pb2.ReportLiveQualityRequest, model_id: str
) -> None:
    problems = _require_text(request.metric, "metric", limit=120)
    problems += _optional_text(request.slice, "slice", limit=200)
    problems += _optional_text(request.source, "source", limit=200)
    problems += _optional_text(request.request_id, "request_id", limit=200)
    if not math.isfinite(request.value):
        problems.append(FieldViolation("value", "must be a finite number", "NOT_FINITE"))
    if request.example_count < 0:
        problems.append(FieldViolation("example_count", "must be >= 0", "OUT_OF_RANGE"))
    if request.trials < 0:
        problems.append(FieldViolation("trials", "must be >= 0", "OUT_OF_RANGE"))
    elif not 0 <= request.successes <= request.trials:
        problems.append(
            FieldViolation(
                "successes", f"must be in [0, trials = {request.trials}]", "OUT_OF_RANGE"
            )
        )
    elif request.trials > 0:
        if not higher_is_better(request.metric):
            problems.append(
                FieldViolation(
                    "trials",
                    f"counts are for success rates; {request.metric!r} is lower-is-better: "
                    "report a bare value",
                    "NOT_A_RATE",
                )
            )
        if request.value != 0 and abs(request.value - request.successes / request.trials) > 1e-6:
            problems.append(
                FieldViolation(
                    "value", "must be 0 or successes / trials when counts are given", "MISMATCH"
                )
            )
    if request.HasField("window") and request.window.ToTimedelta().total_seconds() < 0:
        problems.append(FieldViolation("window", "must not be negative", "OUT_OF_RANGE"))
    if request.checkpoint:
        try:
            checkpoint_model, _ = parse_checkpoint_name(request.checkpoint, field="checkpoint")
        except InvalidArgument as error:
            problems += error.violations
        else:
            if checkpoint_model != model_id:
                problems.append(
                    FieldViolation(
                        "checkpoint", f"not a checkpoint of {request.model}", "WRONG_MODEL"
                    )
                )
    _raise_if(problems, "the live quality report is invalid")


def _counted_live_quality(
    repo: RegistryRepository,
    model: ModelRow,
    checkpoint: str,
    request: service_pb2.ReportLiveQualityRequest,
    *,
    floor: float | None,
    rule: LiveQualityRule,
    now: datetime,
) -> LiveQuality:
    """Add the report's counts to the checkpoint's totals (once per request id) and judge them."""
    counts = repo.live_counts(model.name, checkpoint, request.metric, request.slice)
    successes = counts.successes if counts is not None else 0
    trials = counts.trials if counts is not None else 0
    key = f"live:{request.request_id}" if request.request_id else ""
    if not key or repo.trigger_key(model.name, key) is None:
        successes += request.successes
        trials += request.trials
        if key:
            repo.record_trigger_key(model.name, key, outcome="counted", move=None, now=now)
    quality = judge_live_quality(successes, trials, floor, rule)
    repo.upsert_live_counts(
        LiveCountsRow(
            model=model.name,
            checkpoint=checkpoint,
            metric=request.metric,
            slice=request.slice,
            successes=successes,
            trials=trials,
            lower_bound=quality.lower_bound,
            upper_bound=quality.upper_bound,
            update_time=now,
        )
    )
    return quality


def report_live_quality(
    session: Session, deps: RegistryDeps, request: service_pb2.ReportLiveQualityRequest
) -> resources_pb2.LiveQualityReport:
    """ReportLiveQuality: record a live measurement of the production checkpoint.

    A report about a checkpoint that is not production is refused (FAILED_PRECONDITION naming
    the current one): the gauges the alert rules read only ever describe what serves traffic.
    A counted report (``trials`` > 0) adds to the checkpoint's totals, and the checkpoint is
    below its floor when their confidence sequence says so (:func:`judge_live_quality`); a bare
    ``value`` is compared with the floor as it is.
    """
    model_id = parse_model_name(request.model, field="model")
    _check_live_quality_request(request, model_id)
    repo = RegistryRepository(session)
    counted = request.trials > 0
    # counts are read, added to and written back: one report of a model at a time
    model = _locked_model(repo, request.model) if counted else repo.get_model(request.model)
    if model is None:
        raise NotFound("model", request.model)
    production = repo.production_checkpoint(model.name)
    if not production:
        raise FailedPrecondition(
            f"{model.name} has nothing in production to report live quality for",
            [PreconditionViolation("NO_PRODUCTION", model.name, "production was never set")],
        )
    checkpoint = request.checkpoint or production
    if checkpoint != production:
        _checkpoint_in(repo, checkpoint)
        raise FailedPrecondition(
            f"{checkpoint} is not in production (production is {production})",
            [
                PreconditionViolation(
                    "NOT_PRODUCTION",
                    checkpoint,
                    f"live quality is recorded for the production checkpoint, {production}",
                )
            ],
        )
    definition = resources_pb2.Model.FromString(model.definition)
    floor = floor_of(definition, request.metric)
    report_time = datetime_from_timestamp(request, "report_time") or deps.clock()
    quality = (
        _counted_live_quality(
            repo,
            model,
            checkpoint,
            request,
            floor=floor,
            rule=deps.live_quality,
            now=deps.clock(),
        )
        if counted
        else None
    )
    value = quality.rate if quality is not None else request.value
    example_count = quality.trials if quality is not None else request.example_count
    below = (
        quality.below_floor
        if quality is not None
        else is_past_floor(request.metric, request.value, floor)
    )
    repo.upsert_live_quality(
        LiveQualityRow(
            model=model.name,
            checkpoint=checkpoint,
            metric=request.metric,
            slice=request.slice,
            value=value,
            example_count=example_count,
            window_seconds=request.window.ToTimedelta().total_seconds()
            if request.HasField("window")
            else None,
            floor=floor,
            below_floor=below,
            source=request.source,
            report_time=report_time,
        )
    )
    report = resources_pb2.LiveQualityReport(
        model=model.name,
        checkpoint=checkpoint,
        metric=request.metric,
        slice=request.slice,
        value=value,
        example_count=example_count,
        below_floor=below,
        source=request.source,
    )
    if quality is not None:
        report.total_successes = quality.successes
        report.total_trials = quality.trials
        report.lower_bound = quality.lower_bound
        report.upper_bound = quality.upper_bound
        report.confidence_level = quality.confidence_level
    set_timestamp(report.report_time, report_time)
    if request.HasField("window"):
        report.window.CopyFrom(request.window)
    if floor is not None:
        report.floor = floor
    return report
