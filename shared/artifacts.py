"""The artifact store: immutable blobs and folders addressed by URI.

:class:`ArtifactStore` is what services depend on; :func:`artifact_store_from_uri` picks the
implementation from the configured root: a local directory (``file://`` URIs, this module) or
an S3 bucket prefix (``s3://bucket/prefix``, :mod:`shared.s3_artifacts`).

Local directory by default (``file://`` URIs). Every write is atomic — bytes go to a temporary
file under the store root, are fsynced, then renamed into place, and the folder is fsynced — so
a reader never sees a half-written artifact and a crash leaves at most a temp file in the
store's temp folder, which :meth:`LocalArtifactStore.clean_temp` removes at start-up. A folder
replacing another is swapped in (see :func:`_swap_into_place`): a crash leaves the old folder or
the new one under its key, never neither. Replicas sharing one root (a ReadWriteMany volume)
each write under their own folder in ``.tmp/``, held by a lock for the life of the process:
``clean_temp`` removes its own leftovers and the folders of replicas that are gone, never
another live replica's in-flight upload. Keys and URIs are validated so that nothing escapes
the store root (no ``..``, no absolute keys, no symlink tricks). The sha256 of every artifact
is computed while writing and returned.

Errors name artifacts by their key (the path under their store's root), never by a local path
or a ``file://`` URI: their messages reach API clients (a failed job's message, a refused
split), and where the store lives on the server is none of theirs.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=@+-]*(/[A-Za-z0-9][A-Za-z0-9._=@+-]*)*$")
_CHUNK = 1024 * 1024


class ArtifactError(ValueError):
    """A key or URI the store refuses, or an artifact that is missing. The message names the
    artifact by key; ``uri`` keeps the URI concerned, for logs."""

    def __init__(self, message: str, *, uri: str = "") -> None:
        super().__init__(message)
        self.uri = uri


#: What a write says when its filesystem is full or its quota is spent.
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_WORDS = (
    *(os.strerror(code) for code in sorted(_DISK_FULL_ERRNOS)),
    "StorageFull",  # safetensors' Rust io::ErrorKind
)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or one it was raised from) is a full disk: an OSError with ENOSPC or
    EDQUOT, or a library's wrapper of one that kept only its words (torch's and safetensors'
    writers raise RuntimeError-like errors quoting the OS)."""
    seen: BaseException | None = error
    for _ in range(10):  # a chain of causes, never a cycle
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS:
            return True
        if any(words in str(seen) for words in _DISK_FULL_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_artifact_key(key: str) -> str:
    """``key`` if it is a valid artifact key (relative, ``/``-separated, no ``..``, no leading
    dot: names starting with a dot are the stores' own)."""
    if not _KEY.match(key) or ".." in key.split("/"):
        raise ArtifactError(f"invalid artifact key {key!r}")
    return key


def root_uri(root: Path | str) -> str:
    """A store root as a URI: ``s3://bucket/prefix`` as it is, a local folder as ``file://``."""
    if isinstance(root, str) and "://" in root:
        return root
    return Path(root).resolve().as_uri()


def peer_root_uri(configured: Path | str | None, *, data_dir: Path, service: str) -> str:
    """Another service's artifact root as a URI, for checking the URIs its events announce:
    ``configured`` (that service's ``ARTIFACT_ROOT`` as the deployment sets it), else that
    service's default, ``<data_dir>/<service>/artifacts``."""
    return root_uri(configured or data_dir / service / "artifacts")


def artifact_uri_problem(uri: str, root: str) -> str:  # noqa: PLR0911 - one answer per problem
    """Why ``uri`` does not name an artifact under the store root ``root`` (a ``file://`` or
    ``s3://`` URI, see :func:`root_uri`), or ``""`` when it does.

    Textual and strict, for URIs another service announced: the same scheme, host or bucket,
    then the root's path or prefix, then a valid artifact key (no ``..``, no ``.``-names, no
    empty segments, nothing percent-escaped into them); no query or fragment.
    """
    parsed, base = urlparse(uri), urlparse(root)
    if parsed.scheme != base.scheme:
        return f"scheme {parsed.scheme or '(none)'!r} is not the artifact root's {base.scheme!r}"
    if parsed.query or parsed.fragment or parsed.params:
        return "an artifact URI has no query, parameters or fragment"
    if base.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return f"host {parsed.netloc!r}: a file:// artifact URI names no host"
        prefix = unquote(base.path).rstrip("/")
        path = unquote(parsed.path)
    elif base.scheme == "s3":
        if parsed.netloc != base.netloc:
            return f"bucket {parsed.netloc!r} is not the artifact root's {base.netloc!r}"
        prefix = unquote(base.path).strip("/")
        path = unquote(parsed.path).lstrip("/")
    else:
        return f"unsupported artifact root scheme {base.scheme!r}"
    if prefix and not path.startswith(prefix + "/"):
        return f"it is not under the artifact root {root}"
    try:
        check_artifact_key(path[len(prefix) + 1 :] if prefix else path)
    except ArtifactError as error:
        return f"{error} under the artifact root"
    return ""


@dataclass(frozen=True)
class StoredArtifact:
    """Where an artifact is, and what it is: its sha256 and size in bytes."""

    uri: str
    sha256: str
    size_bytes: int


_LOCK_SUFFIX = ".lock"
#: Held shared while a replica claims its temp folder, exclusively while one sweeps: a sweep
#: never sees a claim half-made (a lock file not yet locked, a folder without its lock).
_SWEEP_LOCK = ".sweep"


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


@contextmanager
def _flocked(path: Path, operation: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)


@dataclass
class _ReplicaTemp:
    """One store instance's temp folder ``.tmp/<host>-<pid>-<random>/`` and the lock that says
    it is in use, ``.tmp/<same name>.lock``: held (``flock``) until the process exits, however
    it exits. ``flock`` works across hosts on NFS (Linux emulates it with POSIX locks there),
    so replicas on different nodes sharing a volume see each other's locks too."""

    folder: Path
    lock_fd: int

    @classmethod
    def claim(cls, tmp: Path) -> _ReplicaTemp:
        base = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with _flocked(tmp / _SWEEP_LOCK, fcntl.LOCK_SH):
            lock_fd = os.open(tmp / f"{base}{_LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT | os.O_EXCL)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            folder = tmp / base
            folder.mkdir()
        return cls(folder, lock_fd)

    def __del__(self) -> None:
        # releases the lock; the folder is then swept by the next clean_temp of any replica
        os.close(self.lock_fd)

    def remove_abandoned(self) -> int:
        """Remove the temp folders of replicas whose lock is free (they are gone) and
        leftovers of stores from before per-replica folders (entries directly in ``.tmp/``);
        returns how many entries went."""
        tmp = self.folder.parent
        removed = 0
        with _flocked(tmp / _SWEEP_LOCK, fcntl.LOCK_EX):
            live = {self.folder.name}
            for lock in tmp.glob(f"*{_LOCK_SUFFIX}"):
                folder = lock.with_suffix("")
                if folder == self.folder:
                    continue
                fd = os.open(lock, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # its replica is alive
                    live.add(folder.name)
                    continue
                finally:
                    os.close(fd)
                lock.unlink()
            for entry in tmp.iterdir():
                if entry.name in live or entry.name == _SWEEP_LOCK or entry.suffix == _LOCK_SUFFIX:
                    continue
                # a gone replica's folder counts its entries; an older store's leftover, itself
                if entry.is_dir():
                    _restore_interrupted_swaps(entry)
                removed += sum(1 for _ in entry.iterdir()) if entry.is_dir() else 1
                _remove(entry)
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: ``renameat2`` flag: swap two paths in one step (Linux 3.15+; ext4, xfs, btrfs, tmpfs).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
#: In a ``put_directory`` staging folder: the path a folder was moved away from, written (and
#: fsynced) before the first of two renames where the filesystem cannot swap.
_RESTORE_TO = "restore-to"
_PREVIOUS = "previous"


def exchange_paths(first: Path, second: Path) -> None:
    """Swap two existing paths atomically (``renameat2(RENAME_EXCHANGE)``): at no moment is
    either name missing. OSError (ENOSYS, EINVAL, EOPNOTSUPP) where the platform or the
    filesystem (e.g. NFS) cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(first), None, str(second))


def _swap_into_place(new: Path, target: Path, staging: Path) -> None:
    """Put folder ``new`` at ``target``; a folder already there ends up under ``staging``.

    A new key is one rename. An existing folder is swapped with the new one in one step where
    the filesystem can; elsewhere it is moved aside and the new one renamed in, with the way
    back written down first in ``staging``: if the process dies between the two renames,
    :func:`_restore_interrupted_swap` (run by ``clean_temp`` at start-up) puts the old folder
    back. Either way a crash never loses the artifact that was there.
    """
    if not target.exists():
        os.replace(new, target)
    else:
        try:
            exchange_paths(new, target)
        except OSError as error:
            if error.errno not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            journal = staging / _RESTORE_TO
            journal.write_text(str(target))
            with journal.open("rb") as handle:
                os.fsync(handle.fileno())
            _fsync_dir(staging)
            os.replace(target, staging / _PREVIOUS)
            os.replace(new, target)
    _fsync_dir(target.parent)


def _restore_interrupted_swap(staging: Path) -> Path | None:
    """Undo half of a two-rename swap that a crash interrupted: the old folder goes back to
    its key if the new one never got there. Returns where a folder was put back."""
    journal, previous = staging / _RESTORE_TO, staging / _PREVIOUS
    if not journal.is_file() or not previous.is_dir():
        return None
    target = Path(journal.read_text())
    if target.exists():  # the new folder made it: the old one is just a leftover
        return None
    os.replace(previous, target)
    _fsync_dir(target.parent)
    return target


def _restore_interrupted_swaps(folder: Path) -> None:
    """Run :func:`_restore_interrupted_swap` over a replica temp folder's staging folders."""
    for staging in folder.glob("dir-*"):
        if (restored := _restore_interrupted_swap(staging)) is not None:
            log.warning(
                "put back an artifact folder a crash had left moved aside",
                extra={"path": restored.name},
            )


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


class ByteSink(Protocol):
    """Where an :class:`ArtifactWriter` puts its bytes: a file, or an upload in progress."""

    def write(self, data: bytes, /) -> object: ...


class ArtifactWriter:
    """A file being written into the store; see :meth:`LocalArtifactStore.open_writer`."""

    def __init__(self, handle: ByteSink) -> None:
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

    def __init__(
        self,
        handle: ByteSink,
        commit_to: Callable[[str], StoredArtifact],
        sync: Callable[[], None],
    ) -> None:
        super().__init__(handle)
        self._commit_to = commit_to
        self._sync = sync

    def sync(self) -> None:
        """Make what was written so far durable (a local store flushes and fsyncs it, S3
        finishes its upload), so that a later :meth:`commit` is quick (e.g. when it runs while
        holding a lock). Call it once everything is written."""
        self._sync()

    def commit(self, key: str) -> StoredArtifact:
        """Put the bytes written so far at ``key`` atomically; no writes may follow."""
        if self.stored is not None:
            raise ArtifactError("the spool was committed already", uri=self.stored.uri)
        self.stored = self._commit_to(key)
        return self.stored


class ArtifactStore(Protocol):
    """Immutable blobs and folders addressed by URI: what services read and write through.

    Every write is atomic (a reader sees the whole artifact or nothing) and returns the
    artifact's sha256; errors are :class:`ArtifactError` naming the artifact by key.
    """

    @property
    def location(self) -> str:
        """The store's root as configured (a local path or ``s3://bucket/prefix``), so another
        process (a training worker) can open the same store with :func:`artifact_store_from_uri`."""
        ...

    def uri_for(self, key: str) -> str:
        """The URI ``key`` has (or would have) in this store."""
        ...

    def key_of(self, uri: str) -> str:
        """The key of the artifact at ``uri``: how errors and messages name it."""
        ...

    def open_spool(self) -> AbstractContextManager[ArtifactSpool]:
        """Stream bytes whose key is chosen after writing (content-addressed artifacts)."""
        ...

    def put_bytes(self, key: str, data: bytes) -> StoredArtifact: ...

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> StoredArtifact: ...

    def put_directory(self, key: str, source: Path) -> StoredArtifact:
        """Store folder ``source`` at ``key`` as a whole; an existing one is replaced."""
        ...

    def open(self, uri: str) -> BinaryIO:
        """Read a blob; a store that keeps its sha256 verifies it by the end of the stream."""
        ...

    def exists(self, uri: str) -> bool: ...

    def materialize(self, uri: str) -> Path:
        """A local path holding the artifact (a file, or a folder for a directory artifact),
        for code that needs one (training and evaluation workers). Remote stores download it
        once into a local cache, verified against its sha256."""
        ...

    def delete(self, uri: str) -> None: ...

    def clean_temp(self) -> int:
        """Remove this store's leftovers of interrupted writes; returns how many."""
        ...


def artifact_store_from_uri(
    root_or_uri: str | Path,
    *,
    readable_roots: Iterable[Path] = (),
    s3_endpoint_url: str | None = None,
    cache_dir: Path | None = None,
) -> ArtifactStore:
    """The artifact store configured as ``root_or_uri``: ``s3://bucket/prefix`` for S3 (or
    any S3-compatible server at ``s3_endpoint_url``), a local path or ``file://`` URI otherwise.

    ``readable_roots`` are other local roots a local store may read; ``cache_dir`` is where a
    remote store materializes artifacts (default: a folder under the system temp directory).
    """
    text = str(root_or_uri)
    if text.startswith("s3://"):
        # boto3 is imported only where a store is on S3
        from shared.s3_artifacts import S3ArtifactStore  # noqa: PLC0415

        return S3ArtifactStore.from_uri(text, endpoint_url=s3_endpoint_url, cache_dir=cache_dir)
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise ArtifactError(f"unsupported artifact root {text!r}", uri=text)
        text = unquote(parsed.path)
    elif "://" in text:
        raise ArtifactError(
            f"unsupported artifact root {text!r}: expected a path, file:// or s3://", uri=text
        )
    return LocalArtifactStore(Path(text), readable_roots=readable_roots)


class WriterBackedStore:
    """``put_bytes`` and ``put_stream`` for a store, written once on top of its
    :meth:`open_writer` (the one place a store decides how bytes become an artifact)."""

    def open_writer(self, key: str) -> AbstractContextManager[ArtifactWriter]:
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes) -> StoredArtifact:
        return self.put_stream(key, [data])

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> StoredArtifact:
        with self.open_writer(key) as writer:
            for chunk in chunks:
                writer.write(chunk)
        assert writer.stored is not None
        return writer.stored


class LocalArtifactStore(WriterBackedStore):
    """Artifacts under one root directory, addressed as ``file:///<root>/<key>``.

    ``readable_roots`` lists other stores' roots this one may read from (a service reading
    another service's artifacts by URI, e.g. the trainer reading a split manifest).
    """

    def __init__(self, root: Path, *, readable_roots: Iterable[Path] = ()) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True)
        self._replica = _ReplicaTemp.claim(self._tmp)
        self._readable = (self.root, *(Path(r).resolve() for r in readable_roots))

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def temp_folder(self) -> Path:
        """This replica's temp folder under ``.tmp/``: where its in-flight writes are."""
        return self._replica.folder

    # -- names ----------------------------------------------------------------------------

    def _path_for_key(self, key: str) -> Path:
        path = (self.root / check_artifact_key(key)).resolve()
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
            raise ArtifactError(
                f"unsupported artifact URI scheme {parsed.scheme!r}: expected file:///…", uri=uri
            )
        path = Path(unquote(parsed.path)).resolve()
        if not any(path.is_relative_to(root) for root in self._readable):
            raise ArtifactError(
                "the artifact URI is outside the artifact stores this service reads", uri=uri
            )
        return path

    def key_of(self, uri: str) -> str:
        """The key of the artifact at ``uri``: its path under the (readable) store root that
        holds it. How errors and messages name an artifact."""
        path = self.local_path(uri)
        root = next(r for r in self._readable if path.is_relative_to(r))
        return path.relative_to(root).as_posix()

    # -- writing --------------------------------------------------------------------------

    @contextmanager
    def open_writer(self, key: str) -> Iterator[ArtifactWriter]:
        """Stream bytes into ``key``; it appears atomically only if the block succeeds.

        On an exception the temp file is removed and nothing appears under ``key``. The
        resulting :class:`StoredArtifact` is available as ``writer.stored`` afterwards.
        """
        target = self._path_for_key(key)
        fd, temp_name = tempfile.mkstemp(dir=self._replica.folder, prefix="write-")
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
        fd, temp_name = tempfile.mkstemp(dir=self._replica.folder, prefix="spool-")
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

        def sync() -> None:
            handle.flush()
            os.fsync(handle.fileno())

        spool = ArtifactSpool(handle, commit_to, sync)
        try:
            yield spool
        finally:
            handle.close()
            temp.unlink(missing_ok=True)

    def put_directory(self, key: str, source: Path) -> StoredArtifact:
        """Copy folder ``source`` to ``key`` atomically (copy to temp, fsync, swap in).

        An existing folder at ``key`` is replaced as a whole, never merged, and never removed
        before the new one is in place: see :func:`_swap_into_place`. A crash at any point
        leaves ``key`` holding the old folder or the new one, complete.
        """
        target = self._path_for_key(key)
        staging = Path(tempfile.mkdtemp(dir=self._replica.folder, prefix="dir-"))
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
            _swap_into_place(copy, target, staging)
            return StoredArtifact(target.as_uri(), sha, size)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- reading and housekeeping ----------------------------------------------------------

    def open(self, uri: str) -> BinaryIO:
        path = self.local_path(uri)
        if not path.is_file():
            raise ArtifactError(f"artifact {self.key_of(uri)!r} does not exist", uri=uri)
        return path.open("rb")

    def exists(self, uri: str) -> bool:
        return self.local_path(uri).exists()

    def materialize(self, uri: str) -> Path:
        """The artifact's own path (no copy); it may not exist, for the caller to report."""
        return self.local_path(uri)

    def delete(self, uri: str) -> None:
        path = self.local_path(uri)
        if not path.is_relative_to(self.root):
            raise ArtifactError(f"artifact {self.key_of(uri)!r} belongs to another store", uri=uri)
        if path == self.root or path.is_relative_to(self._tmp):
            raise ArtifactError("that URI names the store itself, not an artifact", uri=uri)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def temp_entries(self) -> list[Path]:
        """What is left in this replica's temp folder (should be empty between writes)."""
        return sorted(self._replica.folder.iterdir())

    def clean_temp(self) -> int:
        """Remove leftovers of writes interrupted by a crash: this replica's, and those of
        replicas that are gone (their lock is free); returns how many. Another live
        replica's temp folder is never touched."""
        _restore_interrupted_swaps(self._replica.folder)
        entries = self.temp_entries()
        for entry in entries:
            _remove(entry)
        return len(entries) + self._replica.remove_abandoned()
