"""Reading a split: its manifest and the canonical JSONL rows it points into.

The formats are the ones the services agreed on (COMMON.md):

* the **canonical dataset JSONL** — one JSON object per line, every row with a string ``id``;
  classification rows carry ``text`` and ``label``, causal-LM rows ``prompt`` + ``completion``
  or ``messages``; optional ``group``, ``slice``, ``tags``, ``weight``; read by the
  platform's one reader, :mod:`shared.canonical_jsonl`;
* the **split manifest** — one JSON document with ``dataset_version``,
  ``dataset_content_sha256``, ``dataset_artifact_uri``, ``spec``, ``parts`` (row ids per part,
  in dataset order), ``stats`` and ``overlap_count``.

Both are checked against the digests the events carry before a row is used: the manifest
against ``SplitCreated.manifest_sha256``, the JSONL against the manifest's
``dataset_content_sha256``. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.canonical_jsonl import CanonicalJsonlError, Row, read_rows
from shared.modeling.errors import DataUnavailable

PARTS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitManifest:
    """A parsed split manifest. ``parts`` maps ``train``/``validation``/``test`` to row ids."""

    dataset_version: str
    dataset_content_sha256: str
    dataset_artifact_uri: str
    parts: Mapping[str, Sequence[str]]
    spec: Mapping[str, Any] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)
    overlap_count: int = 0


@dataclass(frozen=True)
class SplitRows:
    """The rows of each part of a split, in dataset order."""

    train: list[Row]
    validation: list[Row]
    test: list[Row]
    #: Sorted distinct labels over every row of the dataset version (classification), the
    #: label order adapters are trained with; empty for causal-LM data.
    labels: list[str]


def _read_checked(path: Path, expected_sha256: str | None, what: str) -> bytes:
    # messages say what the file is, not where: they end up in failure messages API clients
    # read, and the server's paths are none of theirs
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataUnavailable(
            f"cannot read the {what}: {error.strerror or type(error).__name__}"
        ) from error
    if expected_sha256:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise DataUnavailable(
                f"the {what} has sha256 {actual}, expected {expected_sha256}: "
                "it changed or is not the artifact the event announced"
            )
    return data


def read_split_manifest(path: Path, *, expected_sha256: str | None = None) -> SplitManifest:
    """Parse a split manifest, checking its sha256 when ``expected_sha256`` is given.

    Raises :class:`DataUnavailable` when it is unreadable, corrupt or not the expected one.
    """
    data = _read_checked(path, expected_sha256, "split manifest")
    try:
        doc = json.loads(data)
        parts = doc["parts"]
        manifest = SplitManifest(
            dataset_version=str(doc["dataset_version"]),
            dataset_content_sha256=str(doc["dataset_content_sha256"]),
            dataset_artifact_uri=str(doc.get("dataset_artifact_uri", "")),
            parts={p: [str(i) for i in parts.get(p, [])] for p in PARTS},
            spec=doc.get("spec") or {},
            stats=doc.get("stats") or {},
            overlap_count=int(doc.get("overlap_count", 0)),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataUnavailable(f"the split manifest is malformed: {error!r}") from error
    return manifest


def parse_canonical_jsonl(data: bytes, *, source: str = "dataset") -> list[Row]:
    """Rows of canonical JSONL bytes, in order (:mod:`shared.canonical_jsonl`, the one reader)."""
    try:
        return read_rows(data)
    except CanonicalJsonlError as error:
        raise DataUnavailable(f"{source} is not canonical JSONL: {error}") from error


def read_canonical_rows(path: Path, *, expected_sha256: str | None = None) -> list[Row]:
    """Every row of a canonical dataset JSONL, in order, checking its sha256 when given."""
    return parse_canonical_jsonl(
        _read_checked(path, expected_sha256, "dataset JSONL"), source="the dataset JSONL"
    )


def select_rows(rows: Iterable[Row], ids: Sequence[str], *, part: str = "part") -> list[Row]:
    """The rows with ``ids``, in the order of ``ids``; a missing id is :class:`DataUnavailable`."""
    by_id = {row["id"]: row for row in rows}
    missing = [i for i in ids if i not in by_id]
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise DataUnavailable(
            f"{len(missing)} {part} row id(s) of the manifest are not in the dataset: {shown}"
        )
    return [by_id[i] for i in ids]


def classification_labels(rows: Iterable[Row]) -> list[str]:
    """The sorted distinct ``label`` values of classification rows: the class index order."""
    return sorted({str(row["label"]) for row in rows if "label" in row})


def load_split_rows(
    manifest_path: Path,
    dataset_path: Path,
    *,
    expected_manifest_sha256: str | None = None,
    verify_dataset_sha256: bool = True,
) -> SplitRows:
    """Read a split's manifest and its dataset, and return the rows of every part.

    The manifest is checked against ``expected_manifest_sha256`` (from ``SplitCreated`` or the
    ``Split`` resource) and the JSONL against the manifest's ``dataset_content_sha256``. Raises
    :class:`DataUnavailable` on any mismatch, missing file or unknown row id.
    """
    manifest = read_split_manifest(manifest_path, expected_sha256=expected_manifest_sha256)
    rows = read_canonical_rows(
        dataset_path,
        expected_sha256=manifest.dataset_content_sha256 if verify_dataset_sha256 else None,
    )
    return SplitRows(
        train=select_rows(rows, manifest.parts["train"], part="train"),
        validation=select_rows(rows, manifest.parts["validation"], part="validation"),
        test=select_rows(rows, manifest.parts["test"], part="test"),
        labels=classification_labels(rows),
    )
