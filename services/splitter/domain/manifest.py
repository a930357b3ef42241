"""Splitting a dataset version into a manifest: the parts, their stats and the overlap check.

The manifest is the artifact trainer and evaluator read (COMMON.md, "Split manifest"): one JSON
document, keys sorted, compact, newline-terminated, so the same content and spec always give
the same bytes. Its overlap check is computed from the finished parts, independently of the
strategy and of the grouping that produced them (no normalized text, no set of near-duplicate
texts and no explicit group may have rows in two parts), and a non-zero overlap is a bug: it raises
:class:`SplitIntegrityError` instead of storing a leaky split.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.splitter.domain.assignment import assign_rows
from services.splitter.domain.rows import SplitRow, SplitRows
from services.splitter.domain.spec import PARTS, Part, SplitSpec
from shared.errors import FailedPrecondition, PreconditionViolation
from shared.near_duplicates import DEFAULT_THRESHOLD
from shared.task_types import TaskType


@dataclass(frozen=True)
class DatasetVersionRef:
    """What the splitter knows of a dataset version (from its DatasetVersioned event)."""

    #: ``datasets/{dataset}/versions/{version}``.
    name: str
    #: ``datasets/{dataset}``.
    dataset: str
    content_sha256: str
    #: The canonical JSONL.
    artifact_uri: str
    task_type: TaskType
    row_count: int
    byte_count: int


@dataclass(frozen=True)
class PartStats:
    """Counts of one part."""

    part: Part
    rows: int
    groups: int
    #: Rows per label, sorted by label (empty for CAUSAL_LM).
    labels: dict[str, int]


@dataclass(frozen=True)
class SplitManifest:
    """A finished split of one dataset version."""

    dataset_version: str
    dataset_content_sha256: str
    dataset_artifact_uri: str
    spec: SplitSpec
    #: Row ids per part, in dataset order; every part is present (empty when unused).
    parts: dict[Part, list[str]]
    #: Stats per part, in :data:`PARTS` order.
    stats: tuple[PartStats, ...]
    #: Texts and explicit groups found in more than one part: always 0 in a manifest that
    #: exists.
    overlap_count: int
    #: Groups in the version (rows connected by a shared text or explicit group).
    group_count: int

    def to_document(self) -> dict[str, Any]:
        return {
            "dataset_version": self.dataset_version,
            "dataset_content_sha256": self.dataset_content_sha256,
            "dataset_artifact_uri": self.dataset_artifact_uri,
            "spec": self.spec.to_document(),
            "parts": {part.value: self.parts[part] for part in PARTS},
            "stats": {s.part.value: {"rows": s.rows, "labels": s.labels} for s in self.stats},
            "overlap_count": self.overlap_count,
        }

    def to_bytes(self) -> bytes:
        """The manifest artifact, byte-identical for the same content and spec."""
        text = json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"))
        return (text + "\n").encode()


class UnsplittableVersion(FailedPrecondition):
    """The version cannot be split with the spec (too few groups, a part left empty …)."""

    def __init__(self, dataset_version: str, problem: str, violation_type: str) -> None:
        super().__init__(
            f"{dataset_version} cannot be split: {problem}",
            [PreconditionViolation(violation_type, dataset_version, problem)],
        )


class SplitIntegrityError(RuntimeError):
    """A split that overlaps or loses rows: a bug in the splitter, never stored."""


def _check_unique_ids(version: str, ids: list[str]) -> None:
    if len(set(ids)) == len(ids):
        return
    seen: set[str] = set()
    for line, row_id in enumerate(ids, start=1):
        if row_id in seen:
            raise UnsplittableVersion(
                version,
                f"row id {row_id!r} appears twice (again on line {line}); the manifest names "
                "rows by id, so ids must be unique",
                "DUPLICATE_ROW_ID",
            )
        seen.add(row_id)


def _straddling(keys: Iterable[str | None], row_parts: list[Part]) -> list[str]:
    """The keys (``None``: no key) whose rows landed in more than one part, sorted."""
    part_of: dict[str, Part] = {}
    straddling: set[str] = set()
    for key, part in zip(keys, row_parts, strict=True):
        if key is not None and part_of.setdefault(key, part) is not part:
            straddling.add(key)
    return sorted(straddling)


def split_dataset(
    version: DatasetVersionRef,
    rows: SplitRows | Iterable[SplitRow],
    spec: SplitSpec,
    *,
    near_duplicate_threshold: float = DEFAULT_THRESHOLD,
) -> SplitManifest:
    """Split ``rows`` (the version's rows, in dataset order) with ``spec``.

    Raises :class:`UnsplittableVersion` when ids repeat, when there are fewer groups than
    parts, or when a part with a positive ratio would stay empty; :class:`SplitIntegrityError`
    if the result overlaps or drops rows (a bug).
    """
    if not isinstance(rows, SplitRows):
        rows = SplitRows.of(rows)
    ids, labels = rows.ids, rows.labels
    _check_unique_ids(version.name, ids)
    groups, row_parts = assign_rows(rows, spec, near_duplicate_threshold=near_duplicate_threshold)
    in_use = spec.parts_in_use
    if len(groups) < len(in_use):
        raise UnsplittableVersion(
            version.name,
            f"{len(groups)} distinct group(s) cannot fill {len(in_use)} parts "
            f"({', '.join(p.value for p in in_use)})",
            "TOO_FEW_GROUPS",
        )

    # Everything below is recomputed from the finished assignment, not trusted from it.
    if len(row_parts) != len(ids):
        raise SplitIntegrityError(f"the split of {version.name} does not cover every row once")
    overlapping = [f"text {key!r}" for key in _straddling(rows.text_keys, row_parts)]
    overlapping += [f"group {key!r}" for key in _straddling(rows.groups, row_parts)]
    similar_of = {text: members[0] for members in groups.near_duplicate_texts for text in members}
    overlapping += [
        f"near-duplicates of {key!r}"
        for key in _straddling((similar_of.get(text) for text in rows.text_keys), row_parts)
    ]
    if overlapping:
        raise SplitIntegrityError(
            f"{len(overlapping)} text(s) or group(s) of {version.name} landed in more than one "
            f"part with {spec}; e.g. {overlapping[:3]}"
        )
    part_of_group = dict(zip(groups.row_groups, row_parts, strict=True))
    part_ids = {
        part: [row_id for row_id, row_part in zip(ids, row_parts, strict=True) if row_part is part]
        for part in PARTS
    }
    label_counts = Counter(zip(row_parts, labels, strict=True))
    group_counts = Counter(part_of_group.values())
    stats = tuple(
        PartStats(
            part=part,
            rows=len(part_ids[part]),
            groups=group_counts[part],
            labels={
                label: label_counts[part, label]
                for label in sorted(
                    {
                        label
                        for (counted, label) in label_counts
                        if counted is part and label is not None
                    }
                )
            },
        )
        for part in PARTS
    )
    empty = [s.part.value for s in stats if s.part in in_use and s.rows == 0]
    if empty:
        raise UnsplittableVersion(
            version.name,
            f"part(s) {', '.join(empty)} would be empty with {spec.strategy.value} and seed "
            f"{spec.seed} over {len(groups)} group(s); add rows or groups, or use STRATIFIED",
            "EMPTY_PART",
        )
    return SplitManifest(
        dataset_version=version.name,
        dataset_content_sha256=version.content_sha256,
        dataset_artifact_uri=version.artifact_uri,
        spec=spec,
        parts=part_ids,
        stats=stats,
        overlap_count=0,  # checked above: an overlapping split never gets this far
        group_count=len(groups),
    )
