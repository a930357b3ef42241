"""The splitter's artifact I/O: reading a version's canonical JSONL, writing split manifests.

The canonical JSONL belongs to the dataset service; the splitter reads it read-only through
the artifact store's readable roots, streaming line by line (through the one canonical JSONL
reader, :mod:`shared.canonical_jsonl`) and keeping only what a split needs
(id, group key, label) — never the whole file or whole rows. While reading it checks the bytes
against what the DatasetVersioned event promised (sha256, size, row count), so a split is
never computed from content other than the version it names.
"""

from __future__ import annotations

from services.splitter.domain import (
    DatasetVersionName,
    DatasetVersionRef,
    MalformedDatasetRow,
    SplitManifest,
    SplitRows,
)
from shared.artifacts import ArtifactError, ArtifactStore, StoredArtifact
from shared.canonical_jsonl import CanonicalJsonlError, CanonicalJsonlReader, NotUtf8Error
from shared.errors import FailedPrecondition, PreconditionViolation

_CHUNK_BYTES = 1024 * 1024


class UnreadableDatasetContent(FailedPrecondition):
    """The version's canonical JSONL is missing, or is not the content its event described."""

    def __init__(self, version: DatasetVersionRef, problem: str) -> None:
        super().__init__(
            f"the content of {version.name} cannot be used: {problem}",
            # the version as subject, not its artifact URI: that is a server path
            [PreconditionViolation("DATASET_CONTENT_UNREADABLE", version.name, problem)],
        )


def read_split_rows(store: ArtifactStore, version: DatasetVersionRef) -> SplitRows:
    """The version's rows, in dataset order, reduced to id, group key and label columns.

    Reads through the platform's one canonical JSONL reader (:mod:`shared.canonical_jsonl`).
    Raises :class:`UnreadableDatasetContent` when the artifact is missing, is not UTF-8, or its
    sha256, size or row count differ from the event's, and :class:`MalformedDatasetRow` for a
    line that is not a canonical row.
    """
    rows = SplitRows()
    add, task_type, name = rows.add, version.task_type, version.name
    try:
        handle = store.open(version.artifact_uri)
    except ArtifactError as error:
        raise UnreadableDatasetContent(version, str(error)) from None
    with handle:
        content = CanonicalJsonlReader(handle, chunk_bytes=_CHUNK_BYTES)
        try:
            for line_number, record in enumerate(content, start=1):
                add(record, task_type, dataset_version=name, line=line_number)
        except NotUtf8Error as error:
            raise UnreadableDatasetContent(version, error.problem) from None
        except CanonicalJsonlError as error:
            raise MalformedDatasetRow(name, error.line, error.problem) from None
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
    store: ArtifactStore, version: DatasetVersionName, split_id: str, manifest: SplitManifest
) -> StoredArtifact:
    """Write the manifest atomically; returns its URI, sha256 and size."""
    return store.put_bytes(manifest_key(version, split_id), manifest.to_bytes())
