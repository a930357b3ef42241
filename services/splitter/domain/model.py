"""The splitter's resources: a stored split and a dataset's split policy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.splitter.domain.manifest import PartStats
from services.splitter.domain.spec import DEFAULT_SPEC, SplitSpec
from shared.task_types import TaskType


@dataclass(frozen=True)
class Split:
    """A split of one dataset version, as stored once its manifest is in place."""

    #: ``datasets/{dataset}/versions/{version}/splits/{split}``.
    name: str
    dataset: str
    dataset_version: str
    dataset_content_sha256: str
    dataset_artifact_uri: str
    task_type: TaskType
    spec: SplitSpec
    manifest_uri: str
    manifest_sha256: str
    #: Stats of the parts in use, in train, validation, test order.
    part_stats: tuple[PartStats, ...]
    overlap_count: int
    group_count: int
    create_time: datetime


@dataclass(frozen=True)
class SplitPolicy:
    """How a dataset's new versions are split automatically."""

    dataset_id: str
    spec: SplitSpec = DEFAULT_SPEC
    auto_split_disabled: bool = False
    #: When the policy was last set; ``None`` while the defaults apply.
    update_time: datetime | None = None
