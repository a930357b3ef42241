"""What the evaluator takes from other services' events: a checkpoint the trainer announced
(CheckpointReady), where a split's rows are (SplitCreated) and where a dataset version's rows
are (DatasetVersioned).

The subscriptions convert each event here (``adapters/protos.py``) before a handler sees it. The
CheckpointReady travels on as the bytes it arrived as: the evaluator stores it with the
checkpoint and reads the checkpoint back from it; it does not read those bytes here.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.evaluator.domain.evaluation import CheckpointRef


@dataclass(frozen=True)
class ReadyCheckpoint:
    """CheckpointReady: a checkpoint the trainer wrote, which may be evaluated."""

    checkpoint: CheckpointRef
    #: The CheckpointReady as it arrived, serialized (deterministically): what is stored.
    event: bytes


@dataclass(frozen=True)
class SplitLocation:
    """Where a split's manifest and its dataset version's rows are, with their digests."""

    split: str
    dataset_version: str
    manifest_uri: str
    manifest_sha256: str
    dataset_artifact_uri: str
    dataset_content_sha256: str


@dataclass(frozen=True)
class DatasetVersionLocation:
    """Where a dataset version's canonical JSONL is, with its digest."""

    dataset_version: str
    artifact_uri: str
    content_sha256: str
