"""The canonical dataset JSONL: its one writer and its one reader, for every service.

A dataset version's content (DATA.md, COMMON.md) is UTF-8 bytes, one row per line: each line is
a compact, key-sorted JSON object with a string ``id``, non-ASCII characters written as
themselves, and every line ends with the byte ``0x0A`` (the last one too).

Only that byte ends a line. A row's text may hold U+0085, U+2028 or U+2029 raw (JSON escapes
only the controls below U+0020), and ``str.splitlines`` — or any reader that splits where
Unicode sees a line break — would cut such a row in two. So the reader here splits bytes on
``b"\\n"`` and nothing else; the dataset service writes with :func:`canonical_json`, and the
splitter, the trainer and the evaluator read with :class:`CanonicalJsonlReader` (a test fails
if any other module reads lines through ``splitlines``/``readlines`` to parse JSON).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

#: A canonical row, as parsed from its line.
Row = dict[str, Any]

LINE_END = b"\n"
_CHUNK_BYTES = 1024 * 1024

_encode = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
# the C scanner under json.loads, called directly: a canonical line needs none of the
# encoding detection and whitespace skipping that json.loads wraps around it per call
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # untyped, but public


def canonical_json(row: Row) -> str:
    """The canonical serialisation of one row, without its line end."""
    return _encode(row)


def canonical_line(row: Row) -> bytes:
    """One row as a canonical line, line end included."""
    return _encode(row).encode() + LINE_END


class CanonicalJsonlError(ValueError):
    """Content that is not canonical JSONL: the line (1-based) and what is wrong with it."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


class NotUtf8Error(CanonicalJsonlError):
    """Bytes that are not UTF-8; ``offset`` is the first bad byte's position in the content."""

    def __init__(self, line: int, offset: int) -> None:
        super().__init__(line, f"not UTF-8 at byte {offset}")
        self.offset = offset


def parse_line(line: str, line_number: int) -> Row:
    """One canonical line (without its line end) as a row; :class:`CanonicalJsonlError` if it
    is not one JSON object with a string ``id``, with nothing around it."""
    try:
        row, end = _scan(line, 0)
    except (StopIteration, ValueError, RecursionError):
        raise CanonicalJsonlError(line_number, "not JSON") from None
    if end != len(line):
        raise CanonicalJsonlError(line_number, "data after the JSON value")
    if type(row) is not dict:
        raise CanonicalJsonlError(line_number, "not a JSON object")
    if type(row.get("id")) is not str:
        raise CanonicalJsonlError(line_number, "not a row with a string 'id'")
    return row


class CanonicalJsonlReader:
    """The rows of canonical JSONL from a binary stream, in order, read in big chunks.

    Hashes and counts every byte on the way (:attr:`digest`, :attr:`size`), so a caller checks
    the content against the digest an event promised without reading it twice. One sha256
    update and one UTF-8 decode per chunk, not per line: a ``0x0A`` byte never occurs inside a
    multi-byte UTF-8 sequence, so decoding everything up to a chunk's last line end and
    splitting the text at ``"\\n"`` is splitting the bytes at ``b"\\n"``.
    """

    def __init__(self, handle: BinaryIO, *, chunk_bytes: int = _CHUNK_BYTES) -> None:
        self._handle = handle
        self._chunk_bytes = chunk_bytes
        self.digest = hashlib.sha256()
        self.size = 0
        #: Lines read so far (every line is a row).
        self.lines = 0

    def __iter__(self) -> Iterator[Row]:
        parse = parse_line
        pending = b""
        for chunk in iter(lambda: self._handle.read(self._chunk_bytes), b""):
            self.digest.update(chunk)
            self.size += len(chunk)
            buffer = pending + chunk
            end = buffer.rfind(LINE_END) + 1
            pending = buffer[end:]
            if end:
                first = self.lines + 1
                texts = self._decode(buffer[:end], self.size - len(buffer)).split("\n")
                texts.pop()  # the nothing after the last line end
                for number, text in enumerate(texts, start=first):
                    self.lines = number
                    yield parse(text, number)
        if pending:  # a last line without its line end is still a line
            self.lines += 1
            yield parse(self._decode(pending, self.size - len(pending)), self.lines)

    def _decode(self, data: bytes, offset: int) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = self.lines + 1 + data.count(LINE_END, 0, error.start)
            raise NotUtf8Error(line, offset + error.start) from None


def read_rows(data: bytes) -> list[Row]:
    """Every row of canonical JSONL bytes, in order; :class:`CanonicalJsonlError` if any line
    is not a canonical row."""
    return list(CanonicalJsonlReader(io.BytesIO(data), chunk_bytes=max(1, len(data))))
