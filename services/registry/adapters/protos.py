"""The registry's converters: the domain's resources (``domain/resources.py``) as the contract's
messages (``tuneline.registry.v1``), requests as the domain's commands, events as domain values,
and enum conversions.

The handlers answer with domain resources and the gRPC servicer converts them here
(``*_to_proto``), so the responses, the events and the webhook all describe a model, checkpoint
or alias the same way; the servicer also turns each request into its command (``*_from_proto``)
before it calls a handler. The handlers still read a few facts of the stored records and build the
events they stage through the last section.
"""

from __future__ import annotations

from typing import Any

from services.registry.adapters import releases
from services.registry.adapters.stored_resources import alias_move_of
from services.registry.adapters.tables import AliasMoveRow, CheckpointRow, ModelRow
from services.registry.domain.commands import (
    AliasHistoryQuery,
    ApproveCheckpoint,
    CheckpointQuery,
    CreateModel,
    PromoteCheckpoint,
    RejectCheckpoint,
    ReportLiveQuality,
    RollbackModel,
    SetServingProfile,
    UnfreezeAutomation,
)
from services.registry.domain.events import (
    BaseModelSource,
    CompletedEvaluation,
    MergedRelease,
    ReadyCheckpoint,
)
from services.registry.domain.live_quality import LiveQualityReport
from services.registry.domain.model import (
    PRODUCTION,
    CheckpointFacts,
    MoveTrigger,
    PromotionPolicy,
    ReviewState,
    Verdict,
    alias_name,
)
from services.registry.domain.promotion import Comparison
from services.registry.domain.resources import (
    Alias,
    AliasMove,
    Checkpoint,
    CheckpointEvaluation,
    Model,
)
from services.registry.domain.rollback import Regression
from shared.protobuf import (
    datetime_from_timestamp,
    enum_from_proto,
    enum_to_proto,
    set_timestamp,
    timestamp_from_datetime,
)
from shared.task_types import TASK_TYPE_PREFIX, TaskType
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2
from tuneline.registry.v1 import events_pb2, resources_pb2, service_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2


def trigger_to_proto(trigger: MoveTrigger) -> resources_pb2.AliasMoveTrigger.ValueType:
    return enum_to_proto(resources_pb2.AliasMoveTrigger, "ALIAS_MOVE_TRIGGER", trigger)


def policy_to_proto(policy: PromotionPolicy) -> resources_pb2.PromotionPolicy.ValueType:
    return enum_to_proto(resources_pb2.PromotionPolicy, "PROMOTION_POLICY", policy)


def policy_from_proto(value: int) -> PromotionPolicy:
    """UNSPECIFIED means MANUAL (the contract's default)."""
    if value == resources_pb2.PROMOTION_POLICY_AUTOMATIC:
        return PromotionPolicy.AUTOMATIC
    return PromotionPolicy.MANUAL


def review_to_proto(state: ReviewState) -> resources_pb2.ReviewState.ValueType:
    return enum_to_proto(resources_pb2.ReviewState, "REVIEW_STATE", state)


def review_from_proto(value: int) -> ReviewState | None:
    return enum_from_proto(resources_pb2.ReviewState, "REVIEW_STATE", value, ReviewState)


def verdict_to_proto(verdict: Verdict) -> common_pb2.EvaluationVerdict.ValueType:
    return enum_to_proto(common_pb2.EvaluationVerdict, "EVALUATION_VERDICT", verdict)


def verdict_from_proto(value: int) -> Verdict:
    """0 is :attr:`Verdict.UNSPECIFIED`: the registry's verdict names "no verdict yet" itself."""
    verdict = enum_from_proto(common_pb2.EvaluationVerdict, "EVALUATION_VERDICT", value, Verdict)
    return Verdict.UNSPECIFIED if verdict is None else verdict


def task_type_from_proto(value: int) -> TaskType | None:
    """``None`` for TASK_TYPE_UNSPECIFIED and for a number this contract does not define."""
    try:
        return enum_from_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, value, TaskType)
    except ValueError:
        return None


def model_to_proto(model: Model) -> resources_pb2.Model:
    result = resources_pb2.Model.FromString(model.definition)
    result.name = model.name
    result.production_checkpoint = model.production_checkpoint
    result.candidate_checkpoint = model.candidate_checkpoint
    result.create_time.CopyFrom(timestamp_from_datetime(model.create_time))
    result.update_time.CopyFrom(timestamp_from_datetime(model.update_time))
    freeze = model.automation_freeze
    if freeze is not None:
        result.automation_freeze.CopyFrom(
            resources_pb2.AutomationFreeze(
                reason=freeze.reason,
                cause=freeze.cause,
                automatic_rollbacks=freeze.automatic_rollbacks,
            )
        )
        set_timestamp(result.automation_freeze.freeze_time, freeze.freeze_time)
    return result


def evaluation_to_proto(evaluation: CheckpointEvaluation) -> resources_pb2.CheckpointEvaluation:
    result = resources_pb2.CheckpointEvaluation.FromString(evaluation.record)
    result.decision = evaluation.decision
    result.decision_reason = evaluation.decision_reason
    return result


def checkpoint_to_proto(checkpoint: Checkpoint) -> resources_pb2.Checkpoint:
    result = resources_pb2.Checkpoint.FromString(checkpoint.record)
    result.name = checkpoint.name
    result.evaluations.extend(evaluation_to_proto(e) for e in checkpoint.evaluations)
    result.verdict = verdict_to_proto(checkpoint.verdict)
    review = checkpoint.review_state
    result.review_state = review_to_proto(review)
    if review in (ReviewState.APPROVED, ReviewState.REJECTED):
        result.review.CopyFrom(
            resources_pb2.Review(
                state=review_to_proto(review),
                reviewer=checkpoint.reviewer,
                reason=checkpoint.review_reason,
                review_time=timestamp_from_datetime(checkpoint.review_time),
            )
        )
    result.aliases.extend(checkpoint.aliases)
    result.ever_production = checkpoint.ever_production
    result.rolled_back = checkpoint.rolled_back
    result.create_time.CopyFrom(timestamp_from_datetime(checkpoint.create_time))
    return result


def move_to_proto(move: AliasMove) -> resources_pb2.AliasMove:
    return resources_pb2.AliasMove(
        alias=move.alias_name,
        revision=move.revision,
        from_checkpoint=move.from_checkpoint,
        to_checkpoint=move.to_checkpoint,
        trigger=trigger_to_proto(move.trigger),
        actor=move.actor,
        reason=move.reason,
        cause=move.cause,
        trigger_time=timestamp_from_datetime(move.trigger_time),
        move_time=timestamp_from_datetime(move.move_time),
    )


def alias_to_proto(alias: Alias) -> resources_pb2.Alias:
    """An alias as a serving fleet reads it: where it points, and what to load from there."""
    result = resources_pb2.Alias(
        name=alias.name, checkpoint=alias.checkpoint, revision=alias.revision
    )
    if alias.last_move is not None:
        result.last_move.CopyFrom(move_to_proto(alias.last_move))
    if alias.checkpoint_record is not None:
        record = resources_pb2.Checkpoint.FromString(alias.checkpoint_record)
        result.artifact_uri = record.artifact_uri
        result.sha256 = record.sha256
        result.base_model.CopyFrom(record.lineage.base_model)
        result.merged_artifact_uri = record.merged_artifact_uri
        result.merged_sha256 = record.merged_sha256
        if record.HasField("tokenizer_fingerprint"):
            result.tokenizer_fingerprint.CopyFrom(record.tokenizer_fingerprint)
    return result


# -- requests as commands -----------------------------------------------------------------------


def _revision(request: Any) -> int | None:
    """A request's ``expected_alias_revision``; ``None`` when it asks for no check."""
    if request.HasField("expected_alias_revision"):
        return int(request.expected_alias_revision)
    return None


def create_model_from_proto(
    request: service_pb2.CreateModelRequest, *, creator: str
) -> CreateModel:
    """``creator``: the verified caller ("" on a server without auth), never the request's."""
    return CreateModel(
        model_id=request.model_id,
        definition=request.model.SerializeToString() if request.HasField("model") else None,
        request_id=request.request_id,
        creator=creator,
    )


def serving_profile_from_proto(request: service_pb2.SetServingProfileRequest) -> SetServingProfile:
    profile = request.serving_profile
    return SetServingProfile(
        model=request.model,
        serving_profile=profile.SerializeToString()
        if request.HasField("serving_profile")
        else None,
    )


def promote_from_proto(request: service_pb2.PromoteCheckpointRequest) -> PromoteCheckpoint:
    return PromoteCheckpoint(
        checkpoint=request.checkpoint,
        alias=request.alias,
        reason=request.reason,
        actor=request.actor,
        request_id=request.request_id,
        expected_alias_revision=_revision(request),
    )


def approve_from_proto(request: service_pb2.ApproveCheckpointRequest) -> ApproveCheckpoint:
    return ApproveCheckpoint(
        checkpoint=request.checkpoint,
        reviewer=request.reviewer,
        reason=request.reason,
        request_id=request.request_id,
        expected_alias_revision=_revision(request),
    )


def reject_from_proto(request: service_pb2.RejectCheckpointRequest) -> RejectCheckpoint:
    return RejectCheckpoint(
        checkpoint=request.checkpoint,
        reviewer=request.reviewer,
        reason=request.reason,
        request_id=request.request_id,
    )


def rollback_from_proto(request: service_pb2.RollbackModelRequest) -> RollbackModel:
    return RollbackModel(
        model=request.model,
        reason=request.reason,
        actor=request.actor,
        request_id=request.request_id,
        target_checkpoint=request.target_checkpoint,
        expected_alias_revision=_revision(request),
    )


def unfreeze_from_proto(request: service_pb2.UnfreezeAutomationRequest) -> UnfreezeAutomation:
    return UnfreezeAutomation(
        model=request.model,
        reason=request.reason,
        actor=request.actor,
        request_id=request.request_id,
    )


def live_quality_from_proto(request: service_pb2.ReportLiveQualityRequest) -> ReportLiveQuality:
    return ReportLiveQuality(
        model=request.model,
        metric=request.metric,
        value=request.value,
        checkpoint=request.checkpoint,
        slice=request.slice,
        example_count=request.example_count,
        successes=request.successes,
        trials=request.trials,
        window=request.window.ToTimedelta() if request.HasField("window") else None,
        source=request.source,
        request_id=request.request_id,
        report_time=datetime_from_timestamp(request, "report_time"),
    )


def checkpoint_query_from_proto(request: service_pb2.ListCheckpointsRequest) -> CheckpointQuery:
    """Raises ``ValueError`` for a verdict or review state the contract does not define."""
    return CheckpointQuery(
        parent=request.parent,
        page_size=request.page_size,
        page_token=request.page_token,
        verdict=verdict_from_proto(request.verdict) if request.verdict else None,
        review_state=review_from_proto(request.review_state),
        training_job=request.training_job,
    )


def alias_history_query_from_proto(
    request: service_pb2.ListAliasHistoryRequest,
) -> AliasHistoryQuery:
    return AliasHistoryQuery(
        name=request.name, page_size=request.page_size, page_token=request.page_token
    )


# -- events as domain values ------------------------------------------------------------------


def regression_from_proto(message: evaluator_events.RegressionDetected) -> Regression:
    return Regression(
        model=message.model,
        evaluation=message.evaluation,
        checkpoint=message.checkpoint,
        checkpoint_sha256=message.checkpoint_sha256,
        metric=message.metric,
        slice=message.slice,
        delta=message.delta,
        baseline=message.baseline,
        candidate=message.candidate,
        p_value=message.p_value,
        event_time=datetime_from_timestamp(message, "event_time"),
    )


#: The ``event_type`` of parked and refused events (and of their metric's label).
CHECKPOINT_READY = trainer_events.CheckpointReady.DESCRIPTOR.full_name
EVALUATION_COMPLETED = evaluator_events.EvaluationCompleted.DESCRIPTOR.full_name

#: CheckpointReady stop reasons of a partly trained adapter: never promoted automatically.
_INTERRUPTED_TRAINING = frozenset(
    {trainer_pb2.TRAINING_STOP_REASON_CANCELLED, trainer_pb2.TRAINING_STOP_REASON_FAILED}
)

_GATED_OUTCOMES = (
    common_pb2.COMPARISON_OUTCOME_WITHIN_TOLERANCE,
    common_pb2.COMPARISON_OUTCOME_REGRESSED,
)


def base_model_from_proto(base: common_pb2.BaseModel) -> BaseModelSource:
    source = base.WhichOneof("source")
    return BaseModelSource(
        source=source,
        value=getattr(base, source) if source else "",
        files_sha256=base.files_sha256,
    )


def ready_checkpoint_from_proto(message: trainer_events.CheckpointReady) -> ReadyCheckpoint:
    record = resources_pb2.Checkpoint(
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
        job_creator=message.job_creator,  # four eyes: it may not approve the checkpoint
    )
    if message.HasField("validation_loss"):
        record.validation_loss = message.validation_loss
    if message.HasField("tokenizer_fingerprint"):
        record.tokenizer_fingerprint.CopyFrom(message.tokenizer_fingerprint)
    return ReadyCheckpoint(
        target_model=message.target_model,
        checkpoint=message.checkpoint,
        training_job=message.training_job,
        artifact_uri=message.artifact_uri,
        sha256=message.sha256,
        task_type_stated=bool(message.lineage.task_type),
        task_type=task_type_from_proto(message.lineage.task_type),
        base_model=base_model_from_proto(message.lineage.base_model),
        event_time=datetime_from_timestamp(message, "event_time"),
        record=record.SerializeToString(deterministic=True),
        payload=message.SerializeToString(deterministic=True),
    )


def ready_checkpoint_from_payload(payload: bytes) -> ReadyCheckpoint:
    """A parked CheckpointReady."""
    return ready_checkpoint_from_proto(trainer_events.CheckpointReady.FromString(payload))


def checkpoint_record_named(record: bytes, name: str) -> bytes:
    """A :attr:`ReadyCheckpoint.record` with the registry name it is registered under."""
    named = resources_pb2.Checkpoint.FromString(record)
    named.name = name
    return named.SerializeToString(deterministic=True)


def _comparison_from_proto(comparison: common_pb2.MetricComparison) -> Comparison:
    return Comparison(
        metric=comparison.metric,
        slice=comparison.slice,
        evaluation_set=comparison.evaluation_set,
        delta=comparison.delta,
        ci_lower=comparison.delta_ci_lower,
        ci_upper=comparison.delta_ci_upper,
        higher_is_better=comparison.higher_is_better,
        gated=comparison.outcome in _GATED_OUTCOMES,
        standard_error=comparison.standard_error,
        family_weight=comparison.family_weight,
        confidence_level=comparison.confidence_level,
    )


def completed_evaluation_from_proto(
    message: evaluator_events.EvaluationCompleted,
) -> CompletedEvaluation:
    """Raises ``ValueError`` for a verdict the contract does not define."""
    baseline = message.baseline
    compared_with_checkpoint = (
        message.HasField("baseline") and baseline.kind != evaluator_pb2.BASELINE_KIND_BASE_MODEL
    )
    record = resources_pb2.CheckpointEvaluation(
        evaluation=message.evaluation,
        verdict=message.verdict,
        evaluation_set=message.evaluation_set,
        metrics=message.metrics,
        comparisons=message.comparisons,
        complete_time=message.event_time,
    )
    if message.HasField("parity"):
        record.parity.CopyFrom(message.parity)
    return CompletedEvaluation(
        model=message.model,
        checkpoint=message.checkpoint,
        evaluation=message.evaluation,
        verdict=verdict_from_proto(message.verdict),
        comparisons=tuple(_comparison_from_proto(c) for c in message.comparisons),
        baseline_checkpoint=baseline.checkpoint if compared_with_checkpoint else None,
        baseline_sha256=baseline.checkpoint_sha256,
        event_time=datetime_from_timestamp(message, "event_time"),
        parity_checked=message.parity.verdict != common_pb2.PARITY_VERDICT_UNSPECIFIED,
        parity_failure=releases.parity_failure(message.parity),
        merged_release=MergedRelease(
            artifact_uri=message.parity.merged_artifact_uri,
            sha256=message.parity.merged_sha256,
        ),
        record=record.SerializeToString(deterministic=True),
        payload=message.SerializeToString(deterministic=True),
    )


def completed_evaluation_from_payload(payload: bytes) -> CompletedEvaluation:
    """A parked EvaluationCompleted."""
    return completed_evaluation_from_proto(evaluator_events.EvaluationCompleted.FromString(payload))


def evaluation_record_with_baseline(record: bytes, baseline_checkpoint: str) -> bytes:
    """A :attr:`CompletedEvaluation.record` with the registry name of its baseline."""
    completed = resources_pb2.CheckpointEvaluation.FromString(record)
    completed.baseline_checkpoint = baseline_checkpoint
    return completed.SerializeToString(deterministic=True)


# -- what the handlers read of the stored records, and the events they stage ---------------------


def checkpoint_facts(row: CheckpointRow) -> CheckpointFacts:
    """The parts of a checkpoint's stored record (a ``Checkpoint``) the handlers decide on."""
    record = resources_pb2.Checkpoint.FromString(row.record)
    return CheckpointFacts(
        artifact_uri=record.artifact_uri,
        sha256=record.sha256,
        training_job=record.training_job,
        training_interrupted=record.training_interrupted,
        job_creator=record.job_creator,
        validation_loss=record.validation_loss if record.HasField("validation_loss") else None,
    )


def model_creator(row: ModelRow) -> str:
    """Who created the model (the verified caller of CreateModel; "" without auth)."""
    return resources_pb2.Model.FromString(row.definition).creator


def model_promoted(
    model: ModelRow, checkpoint: CheckpointRow, move: AliasMoveRow, evaluation: str
) -> events_pb2.ModelPromoted:
    """ModelPromoted for a move of production to ``checkpoint``."""
    record = resources_pb2.Checkpoint.FromString(checkpoint.record)
    return events_pb2.ModelPromoted(
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
        event_time=timestamp_from_datetime(move.move_time),
        **releases.release_fields(record),
    )


def model_rolled_back(
    model: ModelRow, target: CheckpointRow, move: AliasMoveRow
) -> events_pb2.ModelRolledBack:
    """ModelRolledBack for a rollback of production to ``target``."""
    record = resources_pb2.Checkpoint.FromString(target.record)
    moved = move_to_proto(alias_move_of(move))
    return events_pb2.ModelRolledBack(
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
    )


def live_quality_report_to_proto(report: LiveQualityReport) -> resources_pb2.LiveQualityReport:
    message = resources_pb2.LiveQualityReport(
        model=report.model,
        checkpoint=report.checkpoint,
        metric=report.metric,
        slice=report.slice,
        value=report.value,
        example_count=report.example_count,
        below_floor=report.below_floor,
        source=report.source,
    )
    quality = report.counted
    if quality is not None:
        message.total_successes = quality.successes
        message.total_trials = quality.trials
        message.lower_bound = quality.lower_bound
        message.upper_bound = quality.upper_bound
        message.confidence_level = quality.confidence_level
    message.report_time.CopyFrom(timestamp_from_datetime(report.report_time))
    if report.window is not None:
        message.window.FromTimedelta(report.window)
    if report.floor is not None:
        message.floor = report.floor
    return message
