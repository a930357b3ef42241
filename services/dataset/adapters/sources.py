"""Where imported content is read from: ``file://`` URIs inside the configured import roots.

Imports read files the service can see; so that a caller cannot make it read anything else
(``/etc/shadow``, another service's database), a URI must name a regular file inside one of
the configured roots (``TUNELINE_DATASET_IMPORT_ROOTS``; none by default, and never the data
dir unless configured). Two checks, so that nothing changed between them can escape:

1. the path, resolved with symlinks followed, must lie inside a root (INVALID_ARGUMENT
   ``OUTSIDE_IMPORT_ROOTS`` otherwise);
2. the file is then opened component by component from the root's own descriptor, every
   component with ``O_NOFOLLOW``: a symlink anywhere below the root, including one swapped in
   after the first check, makes the open fail (PERMISSION_DENIED ``SYMLINK_REFUSED``), and the
   opened descriptor must be a regular file (``fstat``). What is read is what was checked.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from shared.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied

_CHUNK_BYTES = 1024 * 1024
#: Directories are walked with these; a symlinked directory fails with ELOOP or ENOTDIR.
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: opening a FIFO planted under a root must not hang the RPC thread.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _refused(uri: str, field: str, reason: str, description: str) -> InvalidArgument:
    return InvalidArgument(f"cannot import {uri!r}", [FieldViolation(field, description, reason)])


class ImportSources:
    """Resolves, opens and streams import URIs, confined to ``roots``."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = tuple(root.resolve() for root in roots)
        #: A root as configured (its own symlinks are the operator's choice) → the real folder.
        self._real_root = {Path(os.path.abspath(root)): root.resolve() for root in roots}
        self._real_root.update({real: real for real in self.roots})

    def _requested(self, uri: str, field: str) -> PurePosixPath:
        """The absolute path ``uri`` names, without ``..``: INVALID_ARGUMENT otherwise."""
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise _refused(uri, field, "UNSUPPORTED_URI", "only file:///… URIs are supported")
        path = PurePosixPath(unquote(parsed.path))
        if not path.is_absolute() or ".." in path.parts or "\0" in str(path):
            raise _refused(
                uri, field, "INVALID_PATH", "the path must be absolute, without '..' segments"
            )
        return path

    def _root_of(self, path: PurePosixPath) -> Path | None:
        """The root (as configured, or its real folder) ``path`` lies in, if any."""
        return next((root for root in self._real_root if Path(path).is_relative_to(root)), None)

    def resolve(self, uri: str, *, field: str = "source_uri") -> Path:
        """The path behind ``uri`` (not yet opened): INVALID_ARGUMENT unless it lies inside a
        root both as written and with symlinks resolved."""
        requested = self._requested(uri, field)
        resolved = Path(requested).resolve()
        if self._root_of(requested) is None or self._root_of(PurePosixPath(resolved)) is None:
            raise _refused(
                uri,
                field,
                "OUTSIDE_IMPORT_ROOTS",
                "the file is outside the folders this service may import from "
                "(TUNELINE_DATASET_IMPORT_ROOTS)",
            )
        return Path(requested)

    def open(self, uri: str, *, field: str = "source_uri") -> BinaryIO:
        """Open the regular file behind ``uri`` without following any symlink below its root.

        INVALID_ARGUMENT outside the roots or for a bad URI, PERMISSION_DENIED for a symlink or
        anything but a regular file, NOT_FOUND when there is nothing there.
        """
        path = self.resolve(uri, field=field)
        root = self._root_of(PurePosixPath(path))
        assert root is not None  # resolve() checked it
        parts = path.relative_to(root).parts
        if not parts:
            raise self._not_a_file(uri, field, "the URI names an import root, not a file")
        directory = os.open(self._real_root[root], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=directory)
                os.close(directory)
                directory = inner
            descriptor = os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)
        except FileNotFoundError:
            raise NotFound("file", uri) from None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise self._symlink(uri, field) from None
            raise
        finally:
            os.close(directory)
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise self._not_a_file(uri, field, "only regular files are imported")
            os.set_blocking(descriptor, True)
            return os.fdopen(descriptor, "rb")
        except BaseException:
            os.close(descriptor)
            raise

    @staticmethod
    def _symlink(uri: str, field: str) -> PermissionDenied:
        return PermissionDenied(
            f"cannot import {uri!r}: the path goes through a symbolic link, and imports never "
            "follow one (import the file it points to, by its own path)",
            metadata={"field": field, "reason": "SYMLINK_REFUSED"},
        )

    @staticmethod
    def _not_a_file(uri: str, field: str, description: str) -> PermissionDenied:
        return PermissionDenied(
            f"cannot import {uri!r}: {description}",
            metadata={"field": field, "reason": "NOT_A_REGULAR_FILE"},
        )

    @staticmethod
    def chunks(handle: BinaryIO) -> Iterator[bytes]:
        """The bytes of an opened import, in chunks; closes it at the end."""
        with handle:
            while chunk := handle.read(_CHUNK_BYTES):
                yield chunk
