"""Protobuf ⇄ domain conversions of the splitter: requests in, resources and events out.

The gRPC servicer and the handlers that stage events both use these, so a split looks the same
in a GetSplit response and in its SplitCreated event.
"""

from __future__ import annotations

from services.splitter.domain import (
    DEFAULT_SPEC,
    DatasetVersionRef,
    Part,
    PartStats,
    Split,
    SplitPolicy,
    SplitRatios,
    SplitSpec,
    SplitStrategy,
)
from shared import names
from shared.errors import FieldViolation, InvalidArgument
from shared.protobuf import enum_from_proto, enum_to_proto, set_timestamp, timestamp_from_datetime
from shared.task_types import TASK_TYPE_PREFIX, TaskType
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2 as dataset_events_pb2
from tuneline.dataset.v1 import resources_pb2 as dataset_pb2
from tuneline.splitter.v1 import events_pb2, resources_pb2

_STRATEGIES = {
    SplitStrategy.HASH: resources_pb2.SPLIT_STRATEGY_HASH,
    SplitStrategy.STRATIFIED: resources_pb2.SPLIT_STRATEGY_STRATIFIED,
}
_STRATEGIES_FROM_PROTO = {value: key for key, value in _STRATEGIES.items()}
_PARTS = {
    Part.TRAIN: common_pb2.SPLIT_PART_TRAIN,
    Part.VALIDATION: common_pb2.SPLIT_PART_VALIDATION,
    Part.TEST: common_pb2.SPLIT_PART_TEST,
}


# -- in ----------------------------------------------------------------------------------------


def spec_from_proto(
    message: resources_pb2.SplitSpec, *, present: bool, field_prefix: str
) -> SplitSpec:
    """Resolve a request's spec: unset strategy → HASH, unset ratios → 0.8/0.2, seed as given.

    Raises :class:`InvalidArgument` for a strategy number this server does not know; the
    ratios are checked by :func:`services.splitter.domain.validate_spec`.
    """
    if not present:
        return DEFAULT_SPEC
    if message.strategy == resources_pb2.SPLIT_STRATEGY_UNSPECIFIED:
        strategy = DEFAULT_SPEC.strategy
    elif message.strategy in _STRATEGIES_FROM_PROTO:
        strategy = _STRATEGIES_FROM_PROTO[message.strategy]
    else:
        raise InvalidArgument(
            "unknown split strategy",
            [
                FieldViolation(
                    f"{field_prefix}strategy",
                    f"{message.strategy} is not a SplitStrategy value",
                    "UNKNOWN_ENUM_VALUE",
                )
            ],
        )
    ratios = (
        SplitRatios(message.ratios.train, message.ratios.validation, message.ratios.test)
        if message.HasField("ratios")
        else DEFAULT_SPEC.ratios
    )
    return SplitSpec(strategy=strategy, ratios=ratios, seed=message.seed)


def _version_ref(
    what: str,
    fields: dict[str, str],
    task_type: common_pb2.TaskType.ValueType,
    row_count: int,
    byte_count: int,
) -> DatasetVersionRef:
    """A version from what the dataset service said about it, refusing (``ValueError``) a
    description that lacks what a split needs."""
    try:
        known_task_type = enum_from_proto(
            common_pb2.TaskType, TASK_TYPE_PREFIX, task_type, TaskType
        )
    except ValueError:
        known_task_type = None
    if known_task_type is None:
        raise ValueError(f"{what} {fields['name']!r} has no known task type")
    missing = [name for name, value in fields.items() if not value]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}")
    return DatasetVersionRef(
        name=fields["name"],
        dataset=fields["dataset"],
        content_sha256=fields["content_sha256"],
        artifact_uri=fields["artifact_uri"],
        task_type=known_task_type,
        row_count=row_count,
        byte_count=byte_count,
    )


def version_from_event(event: dataset_events_pb2.DatasetVersioned) -> DatasetVersionRef:
    """The version a DatasetVersioned event announces. Raises ``ValueError`` for an event
    that lacks what a split needs (a broken producer: the consumer dead-letters it)."""
    return _version_ref(
        "DatasetVersioned",
        {
            "name": event.dataset_version,
            "dataset": event.dataset,
            "content_sha256": event.content_sha256,
            "artifact_uri": event.artifact_uri,
        },
        event.task_type,
        event.row_count,
        event.byte_count,
    )


def version_from_resource(version: dataset_pb2.DatasetVersion) -> DatasetVersionRef:
    """The version as GetDatasetVersion describes it (before its DatasetVersioned arrived).
    Raises ``ValueError`` for a description that lacks what a split needs."""
    return _version_ref(
        "DatasetVersion",
        {
            "name": version.name,
            "dataset": version.name.partition("/versions/")[0],
            "content_sha256": version.content_sha256,
            "artifact_uri": version.artifact_uri,
        },
        version.task_type,
        version.row_count,
        version.byte_count,
    )


# -- out ---------------------------------------------------------------------------------------


def spec_to_proto(spec: SplitSpec) -> resources_pb2.SplitSpec:
    return resources_pb2.SplitSpec(
        strategy=_STRATEGIES[spec.strategy],
        ratios=resources_pb2.SplitRatios(
            train=spec.ratios.train, validation=spec.ratios.validation, test=spec.ratios.test
        ),
        seed=spec.seed,
    )


def part_stats_to_proto(stats: PartStats) -> resources_pb2.SplitPartStats:
    return resources_pb2.SplitPartStats(
        part=_PARTS[stats.part],
        row_count=stats.rows,
        group_count=stats.groups,
        label_distribution=[
            common_pb2.LabelCount(label=label, count=count)
            for label, count in sorted(stats.labels.items())
        ],
    )


def split_to_proto(split: Split) -> resources_pb2.Split:
    return resources_pb2.Split(
        name=split.name,
        dataset_version=split.dataset_version,
        dataset_content_sha256=split.dataset_content_sha256,
        task_type=enum_to_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, split.task_type),
        spec=spec_to_proto(split.spec),
        manifest_uri=split.manifest_uri,
        manifest_sha256=split.manifest_sha256,
        parts=[part_stats_to_proto(s) for s in split.part_stats],
        overlap_count=split.overlap_count,
        group_count=split.group_count,
        create_time=timestamp_from_datetime(split.create_time),
        dataset_artifact_uri=split.dataset_artifact_uri,
    )


def split_created_event(split: Split) -> events_pb2.SplitCreated:
    return events_pb2.SplitCreated(
        split=split.name,
        dataset=split.dataset,
        dataset_version=split.dataset_version,
        dataset_content_sha256=split.dataset_content_sha256,
        task_type=enum_to_proto(common_pb2.TaskType, TASK_TYPE_PREFIX, split.task_type),
        spec=spec_to_proto(split.spec),
        manifest_uri=split.manifest_uri,
        manifest_sha256=split.manifest_sha256,
        parts=[part_stats_to_proto(s) for s in split.part_stats],
        overlap_count=split.overlap_count,
        event_time=timestamp_from_datetime(split.create_time),
        dataset_artifact_uri=split.dataset_artifact_uri,
    )


def policy_to_proto(policy: SplitPolicy) -> resources_pb2.SplitPolicy:
    message = resources_pb2.SplitPolicy(
        name=names.SPLIT_POLICY.format(dataset=policy.dataset_id),
        spec=spec_to_proto(policy.spec),
        auto_split_disabled=policy.auto_split_disabled,
    )
    set_timestamp(message.update_time, policy.update_time)
    return message
