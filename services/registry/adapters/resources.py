"""Stored rows as the contract's resources (``tuneline.registry.v1``), and enum conversions.

Used by the handlers (what they return and the events they stage) so the gRPC servicer,
the events and the webhook all describe a model, checkpoint or alias the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.registry.adapters.tables import (
    AliasMoveRow,
    AliasRow,
    CheckpointRow,
    EvaluationRow,
    ModelRow,
)
from services.registry.domain import (
    CANDIDATE,
    PRODUCTION,
    MoveTrigger,
    PromotionPolicy,
    ReviewState,
    Verdict,
    alias_name,
)
from shared.protobuf import enum_from_proto, enum_to_proto, timestamp_from_datetime
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.registry.v1 import resources_pb2


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


def model_to_proto(row: ModelRow, aliases: Sequence[AliasRow]) -> resources_pb2.Model:
    model = resources_pb2.Model.FromString(row.definition)
    model.name = row.name
    by_alias = {a.alias: a.checkpoint for a in aliases}
    model.production_checkpoint = by_alias.get(PRODUCTION, "")
    model.candidate_checkpoint = by_alias.get(CANDIDATE, "")
    model.create_time.CopyFrom(timestamp_from_datetime(row.create_time))
    model.update_time.CopyFrom(timestamp_from_datetime(row.update_time))
    return model


def evaluation_to_proto(row: EvaluationRow) -> resources_pb2.CheckpointEvaluation:
    evaluation = resources_pb2.CheckpointEvaluation.FromString(row.record)
    evaluation.decision = row.decision
    evaluation.decision_reason = row.decision_reason
    return evaluation


def checkpoint_to_proto(
    row: CheckpointRow, evaluations: Sequence[EvaluationRow], aliases: Sequence[str]
) -> resources_pb2.Checkpoint:
    checkpoint = resources_pb2.Checkpoint.FromString(row.record)
    checkpoint.name = row.name
    checkpoint.evaluations.extend(evaluation_to_proto(e) for e in evaluations)
    checkpoint.verdict = verdict_to_proto(Verdict(row.verdict))
    review = ReviewState(row.review_state)
    checkpoint.review_state = review_to_proto(review)
    if review in (ReviewState.APPROVED, ReviewState.REJECTED):
        checkpoint.review.CopyFrom(
            resources_pb2.Review(
                state=review_to_proto(review),
                reviewer=row.reviewer,
                reason=row.review_reason,
                review_time=timestamp_from_datetime(row.review_time),
            )
        )
    checkpoint.aliases.extend(sorted(aliases))
    checkpoint.ever_production = row.ever_production
    checkpoint.rolled_back = row.rolled_back
    checkpoint.create_time.CopyFrom(timestamp_from_datetime(row.create_time))
    return checkpoint


def move_to_proto(row: AliasMoveRow) -> resources_pb2.AliasMove:
    return resources_pb2.AliasMove(
        alias=alias_name(row.model.removeprefix("models/"), row.alias),
        revision=row.revision,
        from_checkpoint=row.from_checkpoint,
        to_checkpoint=row.to_checkpoint,
        trigger=trigger_to_proto(MoveTrigger(row.trigger)),
        actor=row.actor,
        reason=row.reason,
        cause=row.cause,
        trigger_time=timestamp_from_datetime(row.trigger_time),
        move_time=timestamp_from_datetime(row.move_time),
    )


def alias_to_proto(
    model: str,
    alias: str,
    *,
    checkpoint: CheckpointRow | None,
    revision: int,
    last_move: AliasMoveRow | None,
) -> resources_pb2.Alias:
    """An alias as a serving fleet reads it: where it points, and what to load from there."""
    result = resources_pb2.Alias(
        name=alias_name(model.removeprefix("models/"), alias),
        checkpoint=checkpoint.name if checkpoint else "",
        revision=revision,
    )
    if last_move is not None:
        result.last_move.CopyFrom(move_to_proto(last_move))
    if checkpoint is not None:
        record = resources_pb2.Checkpoint.FromString(checkpoint.record)
        result.artifact_uri = record.artifact_uri
        result.sha256 = record.sha256
        result.base_model.CopyFrom(record.lineage.base_model)
        result.merged_artifact_uri = record.merged_artifact_uri
        result.merged_sha256 = record.merged_sha256
        if record.HasField("tokenizer_fingerprint"):
            result.tokenizer_fingerprint.CopyFrom(record.tokenizer_fingerprint)
    return result


def alias_row_to_proto(
    row: AliasRow | None,
    *,
    model: str,
    alias: str,
    checkpoint: CheckpointRow | None,
    last_move: AliasMoveRow | None,
) -> resources_pb2.Alias:
    return alias_to_proto(
        model,
        alias,
        checkpoint=checkpoint,
        revision=row.revision if row else 0,
        last_move=last_move,
    )
