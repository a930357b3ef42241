"""The artifact store: immutable blobs and folders addressed by URI.

Local directory by default (``file://`` URIs). Every write is atomic — bytes go to a temporary
file under the store root, are fsynced, then renamed into place, and the folder is fsynced — so
a reader never sees a half-written artifact and a crash leaves at most a temp file in
``.tmp/``, which :meth:`LocalArtifactStore.clean_temp` removes at start-up. Keys and URIs are
validated so that nothing escapes the store root (no ``..``, no absolute keys, no symlink
tricks). The sha256 of every artifact is computed while writing and returned.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=@+-]*(/[A-Za-z0-9][A-Za-z0-9._=@+-]*)*$")
_CHUNK = 1024 * 1024


class ArtifactError(ValueError):
    """A key or URI the store refuses, or an artifact that is missing."""


@dataclass(frozen=True)
class StoredArtifact:
    """Where an artifact is, and what it is: its sha256 and size in bytes."""

    uri: str
    sha256: str
    size_bytes: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def directory_sha256(path: Path) -> str:
    """A content hash of a folder: every file's relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix().encode()
        # the size frames the content, so file boundaries cannot be confused
        digest.update(relative + b"\0" + b"%d\0" % file.stat().st_size)
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


class ArtifactWriter:
    """A file being written into the store; see :meth:`LocalArtifactStore.open_writer`."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._digest = hashlib.sha256()
        self.size_bytes = 0
        #: Set once the artifact is in place (after the ``with`` block).
        self.stored: StoredArtifact | None = None

    def write(self, data: bytes) -> None:
        self._handle.write(data)
        self._digest.update(data)
        self.size_bytes += len(data)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


class ArtifactSpool(ArtifactWriter):
    """Bytes streamed into the store before their key is known; see
    :meth:`LocalArtifactStore.open_spool`.

    For content-addressed artifacts: the key derives from what is written, so it can only be
    chosen once everything is written (and checked).
    """

    def __init__(self, handle: BinaryIO, commit_to: Callable[[str], StoredArtifact]) -> None:
        super().__init__(handle)
        self._commit_to = commit_to

    def sync(self) -> None:
        """Flush and fsync what was written so far, so that a later :meth:`commit` is quick
        (e.g. when it runs while holding a lock)."""
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def commit(self, key: str) -> StoredArtifact:
        """Put the bytes written so far at ``key`` atomically; no writes may follow."""
        if self.stored is not None:
            raise ArtifactError(f"spool already committed to {self.stored.uri!r}")
        self.stored = self._commit_to(key)
        return self.stored


class LocalArtifactStore:
    """Artifacts under one root directory, addressed as ``file:///<root>/<key>``.

    ``readable_roots`` lists other stores' roots this one may read from (a service reading
    another service's artifacts by URI, e.g. the trainer reading a split manifest).
    """

    def __init__(self, root: Path, *, readable_roots: Iterable[Path] = ()) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True)
        self._readable = (self.root, *(Path(r).resolve() for r in readable_roots))

    # -- names ----------------------------------------------------------------------------

    def _path_for_key(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise ArtifactError(f"invalid artifact key {key!r}")
        path = (self.root / key).resolve()
        if (
            not path.is_relative_to(self.root)
            or path == self._tmp
            or path.is_relative_to(self._tmp)
        ):
            raise ArtifactError(f"artifact key {key!r} escapes the store root")
        return path

    def uri_for(self, key: str) -> str:
        return self._path_for_key(key).as_uri()

    def local_path(self, uri: str) -> Path:
        """The local path behind ``uri``, refusing anything outside the readable roots."""
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ArtifactError(f"unsupported artifact URI {uri!r}: expected file:///…")
        path = Path(unquote(parsed.path)).resolve()
        if not any(path.is_relative_to(root) for root in self._readable):
            raise ArtifactError(f"artifact URI {uri!r} is outside the artifact store")
        return path

    # -- writing --------------------------------------------------------------------------

    @contextmanager
    def open_writer(self, key: str) -> Iterator[ArtifactWriter]:
        """Stream bytes into ``key``; it appears atomically only if the block succeeds.

        On an exception the temp file is removed and nothing appears under ``key``. The
        resulting :class:`StoredArtifact` is available as ``writer.stored`` afterwards.
        """
        target = self._path_for_key(key)
        fd, temp_name = tempfile.mkstemp(dir=self._tmp, prefix="write-")
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                writer = ArtifactWriter(handle)
                yield writer
                handle.flush()
                os.fsync(handle.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, target)
            _fsync_dir(target.parent)
            writer.stored = StoredArtifact(target.as_uri(), writer.sha256, writer.size_bytes)
        finally:
            temp.unlink(missing_ok=True)

    @contextmanager
    def open_spool(self) -> Iterator[ArtifactSpool]:
        """Stream bytes into the temp folder; :meth:`ArtifactSpool.commit` names them later.

        Committing fsyncs the temp file and renames it to the key (atomic, like
        :meth:`open_writer`). Whatever is not committed when the block ends, normally or by an
        exception, is removed: a spool never leaves a temp file behind.
        """
        fd, temp_name = tempfile.mkstemp(dir=self._tmp, prefix="spool-")
        temp = Path(temp_name)
        handle = os.fdopen(fd, "wb")

        def commit_to(key: str) -> StoredArtifact:
            target = self._path_for_key(key)
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, target)
            _fsync_dir(target.parent)
            return StoredArtifact(target.as_uri(), spool.sha256, spool.size_bytes)

        spool = ArtifactSpool(handle, commit_to)
        try:
            yield spool
        finally:
            handle.close()
            temp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> StoredArtifact:
        return self.put_stream(key, [data])

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> StoredArtifact:
        with self.open_writer(key) as writer:
            for chunk in chunks:
                writer.write(chunk)
        assert writer.stored is not None
        return writer.stored

    def put_directory(self, key: str, source: Path) -> StoredArtifact:
        """Copy folder ``source`` to ``key`` atomically (copy to temp, fsync, rename).

        An existing folder at ``key`` is replaced as a whole, never merged.
        """
        target = self._path_for_key(key)
        staging = Path(tempfile.mkdtemp(dir=self._tmp, prefix="dir-"))
        try:
            copy = staging / "content"
            shutil.copytree(source, copy)
            for file in copy.rglob("*"):
                if file.is_file():
                    with file.open("rb") as handle:
                        os.fsync(handle.fileno())
            size = sum(f.stat().st_size for f in copy.rglob("*") if f.is_file())
            sha = directory_sha256(copy)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                old = staging / f"old-{uuid.uuid4().hex}"
                os.replace(target, old)
            os.replace(copy, target)
            _fsync_dir(target.parent)
            return StoredArtifact(target.as_uri(), sha, size)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- reading and housekeeping ----------------------------------------------------------

    def open(self, uri: str) -> BinaryIO:
        path = self.local_path(uri)
        if not path.is_file():
            raise ArtifactError(f"artifact {uri!r} does not exist")
        return path.open("rb")

    def exists(self, uri: str) -> bool:
        return self.local_path(uri).exists()

    def delete(self, uri: str) -> None:
        path = self.local_path(uri)
        if not path.is_relative_to(self.root):
            raise ArtifactError(f"artifact {uri!r} belongs to another store")
        if path == self.root or path.is_relative_to(self._tmp):
            raise ArtifactError(f"{uri!r} is the store itself, not an artifact")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def temp_entries(self) -> list[Path]:
        """What is left in the temp folder (should be empty between writes)."""
        return sorted(self._tmp.iterdir())

    def clean_temp(self) -> int:
        """Remove leftovers of writes interrupted by a crash; returns how many."""
        entries = self.temp_entries()
        for entry in entries:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return len(entries)
