"""Where imported content is read from: ``file://`` URIs inside the allowed roots.

Imports read files the service can see; so that a caller cannot make it read anything else
(``/etc/shadow``, another service's database), a URI must resolve — symlinks followed — to a
regular file inside one of the configured roots.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from shared.errors import FieldViolation, InvalidArgument, NotFound

_CHUNK_BYTES = 1024 * 1024


class ImportSources:
    """Resolves and streams import URIs, confined to ``roots``."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = tuple(root.resolve() for root in roots)

    def resolve(self, uri: str, *, field: str = "source_uri") -> Path:
        """The file behind ``uri``: INVALID_ARGUMENT outside the roots, NOT_FOUND if absent."""
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise InvalidArgument(
                f"cannot import {uri!r}",
                [FieldViolation(field, "only file:///… URIs are supported", "UNSUPPORTED_URI")],
            )
        path = Path(unquote(parsed.path)).resolve()
        if not any(path.is_relative_to(root) for root in self.roots):
            raise InvalidArgument(
                f"cannot import {uri!r}",
                [
                    FieldViolation(
                        field,
                        "the file is outside the folders this service may import from",
                        "OUTSIDE_IMPORT_ROOTS",
                    )
                ],
            )
        if not path.is_file():
            raise NotFound("file", uri)
        return path

    @staticmethod
    def chunks(path: Path) -> Iterator[bytes]:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                yield chunk
