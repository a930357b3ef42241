"""The splitter's artifact I/O: reading a version's canonical JSONL, writing split manifests.

The canonical JSONL belongs to the dataset service; the splitter reads it read-only through
the artifact store's readable roots, streaming line by line and keeping only what a split needs
(id, group key, label) — never the whole file or whole rows. While reading it checks the bytes
against what the DatasetVersioned event promised (sha256, size, row count), so a split is
never computed from content other than the version it names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import BinaryIO

from services.splitter.domain import (
    DatasetVersionName,
    DatasetVersionRef,
    MalformedDatasetRow,
    SplitManifest,
    SplitRows,
)
from shared.artifacts import ArtifactError, LocalArtifactStore, StoredArtifact
from shared.errors import FailedPrecondition, PreconditionViolation

_CHUNK_BYTES = 1024 * 1024


class UnreadableDatasetContent(FailedPrecondition):
    """The version's canonical JSONL is missing, or is not the content its event described."""

    def __init__(self, version: DatasetVersionRef, problem: str) -> None:
        super().__init__(
            f"the content of {version.name} cannot be used: {problem}",
            [PreconditionViolation("DATASET_CONTENT_UNREADABLE", version.artifact_uri, problem)],
        )


class _ContentReader:
    """Reads a file as text lines in big chunks; hashes and counts every byte on the way.

    One sha256 update and one UTF-8 decode per chunk, not per line. Lines come without their
    newline (a last line without one is still a line).
    """

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def lines(self) -> Iterator[str]:
        pending = b""
        for chunk in iter(lambda: self._handle.read(_CHUNK_BYTES), b""):
            self.digest.update(chunk)
            offset = self.size - len(pending)
            self.size += len(chunk)
            buffer = pending + chunk
            end = buffer.rfind(b"\n") + 1  # lines end at a newline byte, never inside a character
            pending = buffer[end:]
            if end:
                yield from self._decode(buffer[:end], offset).split("\n")[:-1]
        if pending:
            yield self._decode(pending, self.size - len(pending))

    @staticmethod
    def _decode(data: bytes, offset: int) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"not UTF-8 at byte {offset + error.start}") from None


def read_split_rows(store: LocalArtifactStore, version: DatasetVersionRef) -> SplitRows:
    """The version's rows, in dataset order, reduced to id, group key and label columns.

    Raises :class:`UnreadableDatasetContent` when the artifact is missing, is not UTF-8, or its
    sha256, size or row count differ from the event's, and :class:`MalformedDatasetRow` for a
    line that is not a canonical row.
    """
    rows = SplitRows()
    # the scanner under json.loads, called directly: canonical lines need none of the
    # encoding detection and whitespace skipping that json.loads wraps around it per call
    scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # untyped, but public
    add, task_type, name = rows.add, version.task_type, version.name
    try:
        handle = store.open(version.artifact_uri)
    except ArtifactError as error:
        raise UnreadableDatasetContent(version, str(error)) from None
    with handle:
        content = _ContentReader(handle)
        try:
            for line_number, line in enumerate(content.lines(), start=1):
                try:
                    record, end = scan(line, 0)
                except (StopIteration, ValueError):
                    raise MalformedDatasetRow(name, line_number, "not JSON") from None
                if end != len(line):
                    raise MalformedDatasetRow(name, line_number, "data after the JSON value")
                if not isinstance(record, dict):
                    raise MalformedDatasetRow(name, line_number, "not a JSON object")
                add(record, task_type, dataset_version=name, line=line_number)
        except ValueError as error:  # from content.lines(): not UTF-8
            raise UnreadableDatasetContent(version, str(error)) from None
    problems = []
    if content.digest.hexdigest() != version.content_sha256:
        problems.append(f"sha256 {content.digest.hexdigest()} != {version.content_sha256}")
    if content.size != version.byte_count:
        problems.append(f"{content.size} bytes != {version.byte_count}")
    if len(rows) != version.row_count:
        problems.append(f"{len(rows)} rows != {version.row_count}")
    if problems:
        raise UnreadableDatasetContent(version, "; ".join(problems))
    return rows


def manifest_key(version: DatasetVersionName, split_id: str) -> str:
    """Where a split's manifest lives in the splitter's store (deterministic, so rewriting it
    after a crash or in a race writes the same bytes to the same place)."""
    return f"splits/{version.dataset_id}/{version.version_id}/{split_id}/manifest.json"


def write_manifest(
    store: LocalArtifactStore, version: DatasetVersionName, split_id: str, manifest: SplitManifest
) -> StoredArtifact:
    """Write the manifest atomically; returns its URI, sha256 and size."""
    return store.put_bytes(manifest_key(version, split_id), manifest.to_bytes())
