"""proto ⇄ domain for the serving service: registry announcements in, serving state out."""

from __future__ import annotations

from collections.abc import Sequence

from services.serving.domain import Release, ServedModel
from services.serving.domain.releases import RefusedRelease
from shared.errors import FieldViolation, InvalidArgument
from shared.modeling.tokenizer_fingerprint import TokenizerFingerprintRecord
from shared.protobuf import enum_from_proto, enum_to_proto, timestamp_from_datetime
from shared.task_types import TASK_TYPE_PREFIX, TaskType
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.registry.v1 import events_pb2 as registry_events_pb2
from tuneline.registry.v1 import resources_pb2 as registry_pb2
from tuneline.serving.v1 import resources_pb2


def task_from_proto(value: common_pb2.TaskType.ValueType, *, field: str) -> TaskType:
    try:
        task = enum_from_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, value, TaskType)
    except ValueError:
        task = None
    if task is None:
        raise InvalidArgument(
            f"unsupported task type {value}", [FieldViolation(field, "unsupported task type")]
        )
    return task


def fingerprint_from_proto(
    message: common_pb2.TokenizerFingerprint, *, present: bool
) -> TokenizerFingerprintRecord | None:
    if not present:
        return None
    return TokenizerFingerprintRecord(
        tokenizer_name=message.tokenizer_name,
        tokenizer_sha256=message.tokenizer_sha256,
        chat_template_sha256=message.chat_template_sha256,
        end_of_turn_token_ids=tuple(int(i) for i in message.end_of_turn_token_ids),
        max_sequence_length=int(message.max_sequence_length),
    )


def release_from_event(
    event: registry_events_pb2.ModelPromoted | registry_events_pb2.ModelRolledBack,
) -> Release:
    """ModelPromoted and ModelRolledBack carry the same release fields."""
    return Release(
        model=event.model,
        checkpoint=event.to_checkpoint,
        revision=event.revision,
        artifact_uri=event.artifact_uri,
        sha256=event.sha256,
        task=task_from_proto(event.task_type, field="task_type"),
        source_checkpoint=event.source_checkpoint,
        tokenizer_fingerprint=fingerprint_from_proto(
            event.tokenizer_fingerprint, present=event.HasField("tokenizer_fingerprint")
        ),
        merged_artifact_uri=event.merged_artifact_uri,
        merged_sha256=event.merged_sha256,
        announced_by="event",
    )


def release_from_alias(alias: registry_pb2.Alias, model: str, task: TaskType) -> Release | None:
    """The release an alias points at (``None`` for an alias never set)."""
    if not alias.checkpoint:
        return None
    return Release(
        model=model,
        checkpoint=alias.checkpoint,
        revision=alias.revision,
        artifact_uri=alias.artifact_uri,
        sha256=alias.sha256,
        task=task,
        tokenizer_fingerprint=fingerprint_from_proto(
            alias.tokenizer_fingerprint, present=alias.HasField("tokenizer_fingerprint")
        ),
        merged_artifact_uri=alias.merged_artifact_uri,
        merged_sha256=alias.merged_sha256,
        announced_by="watch",
    )


def served_to_proto(served: ServedModel) -> resources_pb2.ServedModel:
    release = served.release
    return resources_pb2.ServedModel(
        model=release.model,
        checkpoint=release.checkpoint,
        source_checkpoint=release.source_checkpoint,
        alias_revision=release.revision,
        artifact_uri=release.artifact_uri,
        sha256=release.sha256,
        task_type=enum_to_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, release.task),
        labels=list(served.model.labels),
        device=served.model.device,
        load_time=timestamp_from_datetime(served.load_time),
    )


def refused_to_proto(refused: RefusedRelease) -> resources_pb2.RefusedRelease:
    return resources_pb2.RefusedRelease(
        model=refused.release.model,
        checkpoint=refused.release.checkpoint,
        alias_revision=refused.release.revision,
        reason=refused.reason.value,
        message=refused.message,
        refuse_time=timestamp_from_datetime(refused.refuse_time),
    )


def label_scores_to_proto(
    labels: Sequence[str], scores: Sequence[float]
) -> list[resources_pb2.LabelScore]:
    """One LabelScore per class of a classification head, in the head's label order."""
    return [
        resources_pb2.LabelScore(label=label, score=score)
        for label, score in zip(labels, scores, strict=True)
    ]
