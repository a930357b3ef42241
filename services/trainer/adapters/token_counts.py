"""Counts the tokens of a split's train part as training would see them, for estimates.

The rows are read and encoded exactly as the worker encodes them (``shared.modeling``: the
base model's tokenizer, truncation to ``max_seq_length``, rows training would skip left out),
so an estimate's tokens are the tokens the job will process. Counts are cached per split
manifest, base model and length: a split's content and a model's files never change under
their digests.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from services.trainer.domain.jobs import SplitInfo
from shared.artifacts import ArtifactStore
from shared.modeling import ResolvedModel
from shared.modeling.data import load_split_rows
from shared.modeling.encoding import encode_dataset_rows
from shared.modeling.loading import load_tokenizer


@dataclass(frozen=True)
class TrainTokens:
    """Train rows training can use, and their non-padding tokens (one pass)."""

    examples: int
    tokens: int


class SplitTokenCounter:
    """Encodes a split's train rows with a base model's tokenizer and counts the tokens."""

    def __init__(self, artifacts: ArtifactStore) -> None:
        self._artifacts = artifacts
        self._counted: dict[tuple[str, str, int], TrainTokens] = {}
        self._lock = threading.Lock()

    def train_tokens(self, split: SplitInfo, model: ResolvedModel, max_length: int) -> TrainTokens:
        """Raises ``DataUnavailable`` when the split's files are missing or do not match."""
        key = (split.manifest_sha256 or split.name, model.files_sha256, max_length)
        with self._lock:
            if key in self._counted:
                return self._counted[key]
        rows = load_split_rows(
            Path(self._artifacts.materialize(split.manifest_uri)),
            Path(self._artifacts.materialize(split.dataset_artifact_uri)),
            expected_manifest_sha256=split.manifest_sha256 or None,
        )
        encoded = encode_dataset_rows(
            load_tokenizer(model.path),
            rows.train,
            split.task_type.value,
            max_length=max_length,
            labels=rows.labels,
        )
        counted = TrainTokens(
            examples=len(encoded.examples),
            tokens=sum(len(example.input_ids) for example in encoded.examples),
        )
        with self._lock:
            self._counted[key] = counted
        return counted
