"""Datasets and their versions: names, content-addressed version ids, artifact keys, and the
uploads that never became either."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.reports import Lineage, Summary
from shared import names
from shared.ownership import Owner
from shared.task_types import TaskType

# Names and ids follow shared.names (DATASET, DATASET_VERSION, VALIDATION_REPORT).

#: Hex digits of the content sha256 in a version id (80 bits: collisions are not a concern).
VERSION_ID_HEX_DIGITS = 20


_HEX_DIGITS = frozenset("0123456789abcdef")


def version_id_for(content_sha256: str) -> str:
    """The id of the version whose canonical content has this sha256."""
    return "v-" + content_sha256[:VERSION_ID_HEX_DIGITS]


def is_sha256_hex(value: str) -> bool:
    """Whether ``value`` is a SHA-256 as the API writes it: 64 lowercase hexadecimal digits."""
    return len(value) == 64 and set(value) <= _HEX_DIGITS


class UploadInterrupted(Exception):
    """The client went away before the upload ended; nothing of it is stored."""


class UploadCutShort(UploadInterrupted):
    """The stream stopped before the end message its header announced: a cancel that reached
    the server as a clean end of stream (or a client that forgot it). Nothing is stored; a
    client still listening is told ``INVALID_ARGUMENT``."""


@dataclass(frozen=True)
class Dataset:
    dataset_id: str
    task_type: TaskType
    policy: SchemaPolicy
    display_name: str = ""
    description: str = ""
    latest_version: str = ""
    version_count: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    owner: Owner = field(default_factory=Owner)

    @property
    def name(self) -> str:
        return names.DATASET.format(dataset=self.dataset_id)


@dataclass(frozen=True)
class DatasetVersion:
    dataset_id: str
    version_id: str
    content_sha256: str
    row_count: int
    byte_count: int
    task_type: TaskType
    label_distribution: tuple[tuple[str, int], ...]
    slice_distribution: tuple[tuple[str, int], ...]
    artifact_uri: str
    report: str
    summary: Summary
    lineage: Lineage
    create_time: datetime

    @property
    def name(self) -> str:
        return names.DATASET_VERSION.format(dataset=self.dataset_id, version=self.version_id)

    @property
    def dataset(self) -> str:
        return names.DATASET.format(dataset=self.dataset_id)


def artifact_key(dataset_id: str, version_id: str) -> str:
    """Where a version's canonical JSONL lives in the dataset service's artifact store."""
    return f"datasets/{dataset_id}/versions/{version_id}/content.jsonl"
