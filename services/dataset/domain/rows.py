"""Per-row rules and canonical rows, for one block of complete lines at a time.

:func:`check_block` is the part of validation that needs no memory of other rows: decoding,
JSON parsing, field and type rules, text rules, and the canonical serialisation with the row's
id (``DATA.md``; :mod:`shared.canonical_jsonl` is its reference). Parsing refuses what JSON
allows but a row cannot mean: a key repeated in one object (``duplicate_key``), a lone
surrogate escape (``invalid_unicode``); which characters a string may hold, and which count as
visible, is :mod:`services.dataset.domain.characters`.

It is a pure function of its arguments, so the validator can run blocks in worker processes
(it holds no state but a bounded cache of verdicts, below) and merge the results in order; the
cross-row rules (duplicates, ids, conflicting labels, class balance) stay with the validator,
which sees the fingerprints computed here.

Fingerprints are 64-bit (ids, inputs) and 32-bit (rows) digests that are the same in every
process: a row's **id fingerprint** is its derived id's 16 hex digits as a number (for an uploaded
id, the first 64 bits of its sha256, unless it has the derived form ``r-<16 hex>``); its **row
fingerprint** is the next 32 bits of the sha256 of its canonical JSON without id; its **input
fingerprint** the first 64 bits of the sha256 of the normalized input text (CLASSIFICATION).

Speed matters here (this is most of an upload's CPU time), hence orjson parsing the lines it
can (json's scanner, the reference, decides every other), the inline fast path for plain
``{"text", "label"}`` rows, and within it a bytes-only path for text with nothing to escape;
``test_dataset_validation`` checks each against the reference. Checks that cost per byte in
CPython's loops but are rarely true run once per block: two spaces in a row (vectorized), and
the quotes that tell a repeated key (the block is checked again row by row if they do); the
verdict on a text's non-ASCII characters is cached by those characters (real texts reuse a
few: curly quotes, dashes, accents).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from array import array
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any, NamedTuple, cast

import jsonschema
import numpy as np
import orjson

from services.dataset.domain.characters import (
    describe_control_character,
    first_control_character,
    has_lone_surrogate,
    is_blank,
)
from services.dataset.domain.policy import DEFAULT_VALUE_BOUNDS, SchemaPolicy, ValueBounds
from services.dataset.domain.rules import Rule, Severity
from shared.canonical_jsonl import canonical_json
from shared.input_text import near_duplicate_text, normalize_input_text
from shared.task_types import TaskType

_DERIVED_ID = re.compile(r"^r-([0-9a-f]{16})$")
_ROLES = frozenset({"system", "user", "assistant"})
_FIELDS = {
    TaskType.CLASSIFICATION: frozenset({"id", "text", "label", "group", "slice", "tags", "weight"}),
    TaskType.CAUSAL_LM: frozenset(
        {
            "id",
            "prompt",
            "completion",
            "messages",
            "group",
            "slice",
            "tags",
            "weight",
            "json_schema",
        }
    ),
}
#: Bytes a JSON string holds as they are: printable ASCII but quote and backslash, and every
#: byte of a multi-byte UTF-8 sequence.
_PLAIN_BYTES = bytes(c for c in range(0x20, 0x100) if c not in b'"\\\x7f')
_ASCII_BYTES = bytes(range(0x80))
#: What a line whose strings hold nothing to escape is made of: those bytes and the quotes
#: around its strings (a block of such lines spares every row's own check).
_PLAIN_LINE_BYTES = _PLAIN_BYTES + b'"\n'

#: Verdicts of :func:`_plain_non_ascii`, by the non-ASCII bytes of a text (its ASCII removed),
#: for keys up to ``_CACHED_KEY_BYTES``; cleared when it holds ``_CACHED_VERDICTS``.
_plain_non_ascii_verdicts: dict[bytes, bool] = {}
_CACHED_KEY_BYTES = 64
_CACHED_VERDICTS = 4096
_SPACE = ord(" ")

#: Line numbers of CRLF line ends a block keeps (a report keeps at most 1000 per rule).
_CRLF_LINES_KEPT = 1000
#: Characters of a client's key or field name quoted in a finding's message.
_NAME_SHOWN = 40


class _DuplicateKey(Exception):
    """Raised from inside the JSON scanner: an object names ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The JSON decoder's object hook: a dict, unless a key repeats (the last value would win
    silently, and which one the client meant is ambiguous)."""
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return row


_decoder = json.JSONDecoder(object_pairs_hook=_object_without_repeated_keys)
# the C scanner json.loads runs underneath its Python-level wrapping (which it is not typed as)
_scan_json = _decoder.scan_once  # type: ignore[attr-defined]


def id_fingerprint(row_id: str) -> int:
    """A row id's 64-bit fingerprint; a derived id ``r-<16 hex>`` maps to its hex value."""
    derived = _DERIVED_ID.match(row_id)
    if derived:
        return int(derived.group(1), 16)
    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:8], "big")


def input_fingerprint(text: str) -> int:
    """An input text's 64-bit fingerprint: the first 8 bytes of the sha256 of its normalized
    form, as ``BlockResult.input_keys`` holds it (the validator's and label churn's key)."""
    return int.from_bytes(hashlib.sha256(normalize_input_text(text).encode()).digest()[:8], "big")


def plain_text(text: str) -> tuple[bytes, bytes] | None:
    """``text`` and its normalized form as UTF-8, when both come cheap; else None.

    Cheap means: nothing in ``text`` needs escaping in JSON (so its JSON string is the bytes
    between quotes), and normalizing it only lower-cases ASCII letters and collapses plain
    spaces. That holds when it has no ASCII control character, quote or backslash, and its
    other characters are printable, caseless (``casefold`` keeps them), NFKC and not
    combining (so nothing composes with a neighbour). The checks run on bytes, and on the
    non-ASCII characters alone, which is what makes them cheaper than the work they spare.
    """
    raw = text.encode()
    if raw.translate(None, _PLAIN_BYTES):  # something to escape, or a control character
        return None
    return _plain_forms(text, raw)


def _plain_forms(
    text: str, raw: bytes, *, maybe_double_spaced: bool = True
) -> tuple[bytes, bytes] | None:
    """:func:`plain_text` for a ``text`` known to hold nothing to escape (``raw``: its UTF-8);
    ``maybe_double_spaced=False`` when its block was found to hold no two spaces in a row."""
    if not text.isascii():
        others = raw.translate(None, _ASCII_BYTES)
        plain = _plain_non_ascii_verdicts.get(others)
        if plain is None:
            plain = _plain_non_ascii(others.decode())
            if len(others) <= _CACHED_KEY_BYTES:
                if len(_plain_non_ascii_verdicts) >= _CACHED_VERDICTS:
                    _plain_non_ascii_verdicts.clear()
                _plain_non_ascii_verdicts[others] = plain
        if not plain:
            return None
    folded = raw.lower()  # ASCII letters only, as casefold does to them
    if (maybe_double_spaced and b"  " in folded) or folded[:1] == b" " or folded[-1:] == b" ":
        folded = b" ".join(folded.split())
    return raw, folded


def _plain_non_ascii(others: str) -> bool:
    """Whether the non-ASCII characters of a text (in order, its ASCII removed) keep it plain:
    printable, caseless, NFKC and not combining (see :func:`plain_text`)."""
    return (
        others.isprintable()
        and others.casefold() == others
        and unicodedata.is_normalized("NFKC", others)
        and not any(unicodedata.combining(c) for c in others)
    )


def _double_spaced(block: bytes) -> bool:
    """Whether two spaces follow each other anywhere in ``block``: one vectorized pass, where
    searching each row's text costs several times more (CPython's search is slow for a needle
    of two equal bytes), and real text seldom has them."""
    spaces = np.frombuffer(block, dtype=np.uint8) == _SPACE
    return bool(np.logical_and(spaces[1:], spaces[:-1]).any())


@dataclass(frozen=True)
class RowRules:
    """What :func:`check_block` needs of a dataset's policy (small, so it travels cheaply)."""

    task_type: TaskType
    label_set: frozenset[str] | None
    max_text_length: int
    max_line_bytes: int
    #: Rule ids whose findings reject the content: rows they find are left out.
    error_rules: frozenset[str]
    max_label_length: int = ValueBounds.max_label_length
    max_slice_length: int = ValueBounds.max_slice_length
    #: Whether each kept row's near-duplicate text comes back in the result
    #: (``BlockResult.near_duplicate_texts``): the workers have the parsed row at hand, so the
    #: service's own process need not parse and normalize every row a second time.
    near_duplicate_texts: bool = False

    @classmethod
    def of(
        cls,
        task_type: TaskType,
        policy: SchemaPolicy,
        *,
        max_line_bytes: int,
        bounds: ValueBounds = DEFAULT_VALUE_BOUNDS,
    ) -> RowRules:
        return cls(
            task_type=task_type,
            label_set=frozenset(policy.label_set) if policy.label_set else None,
            max_text_length=policy.max_text_length,
            max_line_bytes=max_line_bytes,
            error_rules=frozenset(r.value for r in Rule if policy.severity(r) is Severity.ERROR),
            max_label_length=bounds.max_label_length,
            max_slice_length=bounds.max_slice_length,
        )


class RowFinding(NamedTuple):
    """One occurrence of a per-row finding; ``names`` lists unknown field names."""

    rule: str
    line: int
    message: str
    field: str = ""
    names: tuple[str, ...] = ()


@dataclass
class BlockResult:
    """The rows of one block that passed the per-row rules, and what the rules found.

    ``content`` holds their canonical lines (each ending in ``\\n``), in order; the arrays
    have one entry per row. Labels are indexes into ``labels`` (local to the block).
    """

    content: bytes = b""
    line_numbers: array[int] = field(default_factory=lambda: array("Q"))
    #: Per row, 12 bytes: the 64-bit id fingerprint and the 32-bit row fingerprint, big-endian.
    keys: bytearray = field(default_factory=bytearray)
    #: Per row, 8 bytes: the 64-bit input fingerprint, big-endian (CLASSIFICATION only).
    input_keys: bytearray = field(default_factory=bytearray)
    label_indexes: array[int] = field(default_factory=lambda: array("I"))
    labels: list[str] = field(default_factory=list)
    #: ``(row index, slice)`` for the rows that have a slice.
    slices: list[tuple[int, str]] = field(default_factory=list)
    findings: list[RowFinding] = field(default_factory=list)
    #: When the rules ask for them: per row, its near-duplicate text
    #: (:func:`shared.input_text.near_duplicate_text`, empty when it has none) in UTF-8, each
    #: ending in ``\n`` (a normalized text has no line end: whitespace runs become a space).
    near_duplicate_texts: bytearray = field(default_factory=bytearray)
    #: Lines that ended in CRLF (``crlf_line_end``): how many, and the first few.
    crlf_count: int = 0
    crlf_lines: list[int] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return len(self.line_numbers)


def check_block(
    block: bytes, first_line: int, rules: RowRules, *, unterminated: bool = False
) -> BlockResult:
    """Per-row rules for the lines of ``block``, numbered from ``first_line``.

    Every line of ``block`` ends in ``\\n``, except the last one when ``unterminated`` (the
    end of the upload): that one is ``truncated_last_line`` unless it is a complete object.
    """
    return _BlockChecker(rules, first_line).run(block, unterminated)


class _BlockChecker:
    def __init__(self, rules: RowRules, first_line: int) -> None:
        self.rules = rules
        self.first_line = first_line
        self.result = BlockResult()
        self.out: list[bytes] = []
        #: label -> (its index in the result, its JSON string as bytes)
        self.labels: dict[str, tuple[int, bytes]] = {}
        #: The labels known to pass every label rule, which the inline fast path may take.
        self.clean_labels: set[str] = set()

    def new_label(self, label: str) -> tuple[int, bytes]:
        known = self.labels[label] = (len(self.result.labels), encode_basestring(label).encode())
        self.result.labels.append(label)
        return known

    def label_is_clean(self, label: str) -> bool:
        """Whether ``label`` passes every rule about labels alone (remembered when it does)."""
        if len(label) > self.rules.max_label_length or not _clean_string(label):
            return False
        self.clean_labels.add(label)
        return True

    def finding(self, rule: Rule, line: int, message: str, field: str = "") -> bool:
        """Record a finding; True when it leaves the row out (the rule is an error)."""
        self.result.findings.append(RowFinding(rule.value, line, message, field))
        return rule.value in self.rules.error_rules

    def run(self, block: bytes, unterminated: bool, *, quotes_by_line: bool = False) -> BlockResult:
        """See :func:`check_block`. ``quotes_by_line``: count each row's quotes, rather than
        the block's once (see :meth:`check_lines`)."""
        lines = self.split_lines(block)
        readable = True  # every line still bytes (none found unreadable as a whole)
        if not unterminated:
            lines.pop()  # the nothing after the final line end
        else:
            tail = lines[-1]
            if type(tail) is bytes and tail.strip():
                decoded = _decode_line(tail)
                last = self.first_line + len(lines) - 1
                if type(decoded) is not str:
                    pass  # not UTF-8: that is its finding
                elif _is_json(decoded):
                    self.finding(
                        Rule.MISSING_FINAL_NEWLINE,
                        last,
                        "the last line had no line end; the canonical content has one",
                    )
                elif decoded.strip():
                    readable = False
                    lines[-1] = _Unreadable(
                        Rule.TRUNCATED_LAST_LINE,
                        "the last line has no line end and is not a complete JSON object",
                    )
        if len(block) > self.rules.max_line_bytes:  # only then can a line be over the limit
            for i, line in enumerate(lines):
                if (
                    type(line) is bytes
                    and len(line) > self.rules.max_line_bytes
                    and type(_decode_line(line)) is str  # one that is not UTF-8 is found so
                ):
                    readable = False
                    lines[i] = _Unreadable(Rule.LINE_TOO_LONG, too_long_message(self.rules))
        # no backslash and no control character anywhere: no string of the block needs escaping
        escape_free = not block.translate(None, _PLAIN_LINE_BYTES)
        quotes_by_block = escape_free and readable and not quotes_by_line
        quotes = self.check_lines(
            lines,
            escape_free=escape_free,
            double_spaced=_double_spaced(block) if escape_free else True,
            quotes_by_block=quotes_by_block,
        )
        if quotes_by_block and quotes != block.count(b'"'):
            # some row repeats a key, which orjson merged: check the block again, row by row
            return _BlockChecker(self.rules, self.first_line).run(
                block, unterminated, quotes_by_line=True
            )
        result = self.result
        if self.out:
            self.out.append(b"")
            result.content = b"\n".join(self.out)
        return result

    def split_lines(self, block: bytes) -> list[bytes | _Unreadable]:
        """The block's lines as bytes, without line ends (decoding is the parser's).

        Lines end at ``\\n`` only (the byte 0x0A never occurs inside a multi-byte character);
        a CR before it is part of the line end of a line that is text, and counted
        (``crlf_line_end``); a line that is not UTF-8 keeps it and is found as not UTF-8.
        """
        lines = cast("list[bytes | _Unreadable]", block.split(b"\n"))
        if b"\r" not in block:
            return lines
        result = self.result
        for i, line in enumerate(lines):
            if type(line) is bytes and line.endswith(b"\r") and type(_decode_line(line)) is str:
                lines[i] = line[:-1]
                result.crlf_count += 1
                if len(result.crlf_lines) < _CRLF_LINES_KEPT:
                    result.crlf_lines.append(self.first_line + i)
        return lines

    def check_lines(  # noqa: PLR0912, PLR0915 - hot loop
        self,
        lines: list[bytes | _Unreadable],
        *,
        escape_free: bool = False,
        double_spaced: bool = True,
        quotes_by_block: bool = False,
    ) -> int:
        """The per-row rules for each line; returns the quotes its rows account for, when
        ``quotes_by_block`` (else 0).

        A repeated key is found by counting quotes (below). Row by row, that is a pass over
        each line; for a block without a backslash (``escape_free``: every quote delimits a
        string), :meth:`run` counts the block's quotes once instead and compares them with
        what the rows account for, and checks the block again row by row if they differ.
        """
        rules = self.rules
        result = self.result
        out = self.out
        line_numbers = result.line_numbers
        keys = result.keys
        input_keys = result.input_keys
        label_indexes = result.label_indexes
        labels = self.labels
        clean_labels = self.clean_labels
        clean_label = self.label_is_clean
        label_set = rules.label_set
        max_text = rules.max_text_length
        classification = rules.task_type is TaskType.CLASSIFICATION
        near_duplicate_texts = result.near_duplicate_texts if rules.near_duplicate_texts else None
        fast_loads = orjson.loads
        FastDecodeError = orjson.JSONDecodeError  # noqa: N806 - a class, held local for speed
        read_line = self.read_line
        sha256 = hashlib.sha256
        quote = encode_basestring
        normalize = normalize_input_text
        plain_of = plain_text
        plain_forms = _plain_forms
        line_number = self.first_line - 1
        members = quotes = 0  # of rows parsed fast, and the quotes of the others
        for line in lines:
            line_number += 1
            if type(line) is not bytes:
                assert isinstance(line, _Unreadable)
                self.finding(line.rule, line_number, line.message)
                continue
            # The fast path: orjson parses the line's bytes (checking they are UTF-8) more than
            # twice as fast as json's scanner parses its decoded text. Without a backslash every
            # quote delimits a string, so a flat object of strings holds four per member: fewer
            # members than that means a repeated key, which orjson merged. (That its values are
            # all strings, an inline row shows by itself; any other row is checked below.)
            # Every other line, and every line orjson refuses (not UTF-8, not JSON, NaN,
            # integers past 64 bits), the reference parser reads: the rules and findings are its.
            row: Any = None
            if quotes_by_block:  # no backslash in the block; run() counts the quotes
                try:
                    row = fast_loads(line)
                except FastDecodeError:
                    row = None
                else:
                    if type(row) is not dict:
                        row = None
            elif b"\\" not in line:
                try:
                    row = fast_loads(line)
                except FastDecodeError:
                    row = None
                else:
                    if type(row) is not dict or line.count(b'"') != 4 * len(row):
                        row = None
            if row is None:
                if quotes_by_block:
                    quotes += line.count(b'"')
                row = read_line(line, line_number)
                if row is None:
                    continue
                fast = False
            else:
                fast = True
            # Any: the checks below narrow them, but through a flag, which mypy cannot follow
            text: Any = row.get("text")
            label: Any = row.get("label")
            group: Any = row.get("group") if len(row) == 3 else None
            plain = None
            inline = (
                classification
                and type(label) is str
                and (label in clean_labels or clean_label(label))
                and (len(row) == 2 or (type(group) is str and _clean_string(group)))
                and type(text) is str
                and text
                and not text.isspace()
                and len(text) <= max_text
                and (label_set is None or label in label_set)
            )
            if inline:
                plain = (
                    plain_forms(text, text.encode(), maybe_double_spaced=double_spaced)
                    if escape_free
                    else plain_of(text)
                )
                if plain is None:  # something to escape or normalize: look closer
                    inline = _clean_string(text)
                elif len(plain[0]) != len(text):  # plain, not ASCII: no control character
                    # (plain_text saw to it) but maybe invisible, unless its first character
                    # past the spaces is ASCII, which is then visible
                    first = plain[0].lstrip(b" ")[:1]
                    inline = b"!" <= first <= b"~" or not is_blank(text)
            if inline:
                # the common case, inline: a {"text", "label"} row, maybe with a "group", that
                # passes every rule; the canonical row is {"group", "id", "label", "text"}
                if fast:
                    members += len(row)
                known = labels.get(label)
                if known is None:
                    known = self.new_label(label)
                index, label_json = known
                if plain is not None:
                    raw, folded = plain
                    body = b'"label":' + label_json + b',"text":"' + raw + b'"}'
                else:
                    body = f'"label":{quote(label)},"text":{quote(text)}}}'.encode()
                    folded = normalize(text).encode()
                if group is None:
                    digest = sha256(b"{" + body).digest()
                    out.append(b'{"id":"r-' + digest[:8].hex().encode() + b'",' + body)
                else:
                    before = b'{"group":' + quote(group).encode() + b","
                    digest = sha256(before + body).digest()
                    out.append(before + b'"id":"r-' + digest[:8].hex().encode() + b'",' + body)
                line_numbers.append(line_number)
                keys += digest[:12]
                input_keys += sha256(folded).digest()[:8]
                label_indexes.append(index)
                if near_duplicate_texts is not None:
                    near_duplicate_texts += folded
                    near_duplicate_texts += b"\n"
            else:
                if fast and list(map(type, row.values())).count(str) != len(row):
                    # not only strings: a value may hold quotes, so the count above proves
                    # nothing about repeated keys
                    if quotes_by_block:
                        quotes += line.count(b'"')
                    row = read_line(line, line_number)
                    if row is None:
                        continue
                elif fast:
                    members += len(row)
                fields = self.general_row(row, line_number)
                if fields is not None:
                    self.add_row(fields, row.get("id"), line_number)
        return 4 * members + quotes if quotes_by_block else 0

    def read_line(self, raw: bytes, line_number: int) -> dict[str, Any] | None:  # noqa: PLR0911 - a return per finding
        """The row a line holds, by the reference parser (json's), or None with its finding."""
        line = _decode_line(raw)
        if type(line) is not str:
            assert isinstance(line, _Unreadable)
            self.finding(line.rule, line_number, line.message)
            return None
        if not line or line.isspace():
            self.finding(Rule.BLANK_LINE, line_number, "an empty line was skipped")
            return None
        try:
            try:
                # json.loads without its Python-level wrapping: a third faster
                row, end = _scan_json(line, 0)
                if end != len(line) and not line[end:].isspace():
                    raise ValueError("extra data")  # json.loads below names it
            except (StopIteration, ValueError, RecursionError):
                try:  # leading whitespace, or not JSON: json.loads decides, and explains
                    row = _decoder.decode(line)
                except (ValueError, RecursionError) as error:
                    self.finding(Rule.NOT_JSON_OBJECT, line_number, f"not valid JSON: {error}")
                    return None
        except _DuplicateKey as repeated:
            self.finding(
                Rule.DUPLICATE_KEY,
                line_number,
                f"an object names the key {shown_name(repeated.key)} more than once; "
                "which value is meant is ambiguous",
            )
            return None
        if type(row) is not dict:
            self.finding(
                Rule.NOT_JSON_OBJECT,
                line_number,
                f"a line must hold one JSON object, not a JSON {_json_kind(row)}",
            )
            return None
        if "\\u" in line and has_lone_surrogate(line, row):
            self.finding(
                Rule.INVALID_UNICODE,
                line_number,
                "a string holds a lone surrogate escape (\\ud800-\\udfff without its "
                "pair), which is not a Unicode character",
            )
            return None
        return row

    # -- every other row: all fields, all rules ------------------------------------------------

    def general_row(self, row: dict[str, Any], line: int) -> dict[str, Any] | None:  # noqa: PLR0912
        """The canonical fields of a row (without id), or None when it is left out."""
        rules = self.rules
        unknown = row.keys() - _FIELDS[rules.task_type]
        drop = False
        if unknown:
            self.result.findings.append(
                RowFinding(Rule.UNKNOWN_FIELD.value, line, "", "", tuple(sorted(unknown)))
            )
            drop = Rule.UNKNOWN_FIELD.value in rules.error_rules
        fields: dict[str, Any] = {}
        for name in ("group", "slice"):
            if name in row:
                value = row[name]
                if type(value) is not str or is_blank(value):
                    drop |= self.finding(
                        Rule.WRONG_TYPE, line, f"{name!r} must be a non-empty string", name
                    )
                else:
                    drop |= not self.control_rule(name, value, line)
                    fields[name] = value
        if "tags" in row:
            tags = row["tags"]
            if type(tags) is not list or any(type(t) is not str or is_blank(t) for t in tags):
                drop |= self.finding(
                    Rule.WRONG_TYPE, line, "'tags' must be a list of non-empty strings", "tags"
                )
            else:
                for tag in tags:
                    if not self.control_rule("tags", tag, line):
                        drop = True
                        break
                fields["tags"] = tags
                if tags and "slice" not in fields:
                    fields["slice"] = tags[0]
        if "slice" in fields and len(fields["slice"]) > rules.max_slice_length:
            drop |= self.finding(
                Rule.SLICE_TOO_LONG,
                line,
                f"the slice is {len(fields['slice'])} characters long, more than "
                f"{rules.max_slice_length}",
                "slice" if "slice" in row else "tags",
            )
        if "weight" in row:
            weight = row["weight"]
            # an int may be too big for a float, so only floats go through isfinite
            if (type(weight) is int and weight >= 0) or (
                type(weight) is float and math.isfinite(weight) and weight >= 0
            ):
                fields["weight"] = weight
            else:
                drop |= self.finding(
                    Rule.WRONG_TYPE,
                    line,
                    "'weight' must be a finite, non-negative number",
                    "weight",
                )
        if "id" in row:
            if type(row["id"]) is not str or is_blank(row["id"]):
                drop |= self.finding(Rule.WRONG_TYPE, line, "'id' must be a non-empty string", "id")
            else:
                drop |= not self.control_rule("id", row["id"], line)
        if rules.task_type is TaskType.CLASSIFICATION:
            drop |= not self.classification_fields(row, fields, line)
        else:
            drop |= not self.causal_lm_fields(row, fields, line)
        return None if drop else fields

    def required_string(self, row: dict[str, Any], name: str, line: int) -> str | None:
        if name not in row:
            self.finding(Rule.MISSING_FIELD, line, f"{name!r} is required", name)
            return None
        value = row[name]
        if type(value) is not str:
            self.finding(
                Rule.WRONG_TYPE, line, f"{name!r} must be a string, not {_json_kind(value)}", name
            )
            return None
        return value

    def text_rules(self, name: str, value: str, line: int) -> bool:
        """``empty_text`` and ``control_character``; False when a finding leaves the row out."""
        keep = True
        if is_blank(value):
            keep = not self.finding(
                Rule.EMPTY_TEXT,
                line,
                f"{name!r} is empty, or only whitespace and invisible characters",
                name,
            )
        return self.control_rule(name, value, line) and keep

    def control_rule(self, name: str, value: str, line: int) -> bool:
        """``control_character``; False when the finding leaves the row out."""
        index = first_control_character(value)
        if index < 0:
            return True
        return not self.finding(
            Rule.CONTROL_CHARACTER, line, describe_control_character(name, value, index), name
        )

    def length_rule(self, name: str, length: int, line: int) -> bool:
        """``text_too_long``; False when the finding leaves the row out."""
        limit = self.rules.max_text_length
        if length > limit:
            return not self.finding(
                Rule.TEXT_TOO_LONG,
                line,
                f"{name} is {length} characters long, more than {limit}",
                name.split(" ", maxsplit=1)[0],
            )
        return True

    def classification_fields(self, row: dict[str, Any], fields: dict[str, Any], line: int) -> bool:
        text = self.required_string(row, "text", line)
        label = self.required_string(row, "label", line)
        if text is None or label is None:
            return False
        keep = self.text_rules("text", text, line)
        keep = self.text_rules("label", label, line) and keep
        keep = self.length_rule("text", len(text), line) and keep
        limit = self.rules.max_label_length
        if len(label) > limit:
            self.finding(
                Rule.LABEL_TOO_LONG,
                line,
                f"the label is {len(label)} characters long, more than {limit}",
                "label",
            )
            return False  # and too long to quote in any other finding
        label_set = self.rules.label_set
        if label_set is not None and label not in label_set:
            keep = (
                not self.finding(
                    Rule.LABEL_NOT_IN_SET, line, f"label {label!r} is not in the label set", "label"
                )
                and keep
            )
        fields["text"] = text
        fields["label"] = label
        return keep

    def causal_lm_fields(self, row: dict[str, Any], fields: dict[str, Any], line: int) -> bool:
        if "json_schema" in row and not self.json_schema(row["json_schema"], fields, line):
            return False
        if "messages" in row:
            if "prompt" in row or "completion" in row:
                self.finding(
                    Rule.WRONG_TYPE,
                    line,
                    "a row has either 'prompt' and 'completion' or 'messages', not both",
                    "messages",
                )
                return False
            return self.messages(row["messages"], fields, line)
        prompt = self.required_string(row, "prompt", line)
        completion = self.required_string(row, "completion", line)
        if prompt is None or completion is None:
            return False
        keep = self.text_rules("prompt", prompt, line)
        keep = self.text_rules("completion", completion, line) and keep
        keep = self.length_rule("prompt + completion", len(prompt) + len(completion), line) and keep
        fields["prompt"] = prompt
        fields["completion"] = completion
        return keep

    def json_schema(self, schema: object, fields: dict[str, Any], line: int) -> bool:
        """A causal-LM row's ``json_schema``: the JSON Schema its answer must satisfy (``{}``:
        any JSON document); the evaluator scores ``json_valid`` on such rows."""
        problem = ""
        if type(schema) is not dict:
            problem = f"'json_schema' must be a JSON Schema object, not {_json_kind(schema)}"
        else:
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as error:
                problem = f"'json_schema' is not a valid JSON Schema: {error.message[:200]}"
        if problem:
            self.finding(Rule.WRONG_TYPE, line, problem, "json_schema")
            return False
        fields["json_schema"] = schema
        return True

    def messages(self, messages: object, fields: dict[str, Any], line: int) -> bool:
        if type(messages) is not list or not messages:
            self.finding(Rule.WRONG_TYPE, line, "'messages' must be a non-empty list", "messages")
            return False
        clean: list[dict[str, str]] = []
        for message in messages:
            if (
                type(message) is not dict
                or message.keys() != {"role", "content"}
                or type(message["content"]) is not str
                or type(message["role"]) is not str
                or message["role"] not in _ROLES
            ):
                self.finding(
                    Rule.WRONG_TYPE,
                    line,
                    "each message must be {'role': 'system'|'user'|'assistant', 'content': string}",
                    "messages",
                )
                return False
            clean.append({"content": message["content"], "role": message["role"]})
        if not any(m["role"] == "assistant" for m in clean):
            self.finding(
                Rule.MISSING_FIELD, line, "'messages' has no assistant message to learn", "messages"
            )
            return False
        keep = True
        if any(is_blank(m["content"]) for m in clean):
            keep = not self.finding(
                Rule.EMPTY_TEXT,
                line,
                "a message's content is empty, or only whitespace and invisible characters",
                "messages",
            )
        for message in clean:
            if not self.control_rule("messages", message["content"], line):
                keep = False
                break
        keep = self.length_rule("messages", sum(len(m["content"]) for m in clean), line) and keep
        fields["messages"] = clean
        return keep

    def add_row(self, fields: dict[str, Any], uploaded_id: str | None, line: int) -> None:
        members = canonical_members(fields)
        digest = hashlib.sha256(f"{{{','.join(members)}}}".encode()).digest()
        if uploaded_id is None:
            row_id = "r-" + digest[:8].hex()
            id_key = digest[:8]
        else:
            row_id = uploaded_id
            id_key = id_fingerprint(uploaded_id).to_bytes(8, "big")
        result = self.result
        self.out.append(with_id(members, row_id).encode())
        index = result.row_count
        result.line_numbers.append(line)
        result.keys += id_key + digest[8:12]
        if self.rules.task_type is TaskType.CLASSIFICATION:
            text = fields["text"]
            plain = plain_text(text)
            folded = plain[1] if plain is not None else normalize_input_text(text).encode()
            result.input_keys += hashlib.sha256(folded).digest()[:8]
            known = self.labels.get(fields["label"]) or self.new_label(fields["label"])
            result.label_indexes.append(known[0])
        else:
            folded = (near_duplicate_text(fields) or "").encode()
        if self.rules.near_duplicate_texts:
            result.near_duplicate_texts += folded + b"\n"
        if "slice" in fields:
            result.slices.append((index, fields["slice"]))


def canonical_members(fields: dict[str, Any]) -> list[str]:
    """The ``"key":value`` members of a row's canonical JSON, in key order, without ``id``.

    ``{`` + their comma-joined text + ``}`` is :func:`canonical_json` of the row: keys are
    plain ASCII, strings go through the encoder's own ``encode_basestring``, anything else
    through the canonical encoder. Building the members once serves both the row without id
    (hashed into the derived id) and the row with it (:func:`with_id`).
    """
    return [
        f'"{key}":{encode_basestring(value) if type(value) is str else canonical_json(value)}'
        for key, value in sorted(fields.items())
    ]


def with_id(members: list[str], row_id: str) -> str:
    """The canonical row of :func:`canonical_members` with ``"id"`` at its sorted place."""
    cut = sum(1 for member in members if member[1 : member.index('"', 1)] < "id")
    spliced = [*members[:cut], f'"id":{encode_basestring(row_id)}', *members[cut:]]
    return f"{{{','.join(spliced)}}}"


def _clean_string(value: str) -> bool:
    """Whether ``value`` shows something and holds no control character (the checks of
    ``empty_text`` and ``control_character``)."""
    return not is_blank(value) and first_control_character(value) < 0


def shown_name(name: str) -> str:
    """A client's key or field name as a finding quotes it: short, and printable."""
    if len(name) <= _NAME_SHOWN and name.isprintable():
        return name
    return repr(name[:_NAME_SHOWN]) + ("…" if len(name) > _NAME_SHOWN else "")


def too_long_message(rules: RowRules) -> str:
    return f"a line is longer than {rules.max_line_bytes} bytes; it was skipped"


@dataclass(frozen=True)
class _Unreadable:
    """Stands in for a line that cannot be read as text: the finding it gets."""

    rule: Rule
    message: str


def _decode_line(line: bytes) -> str | _Unreadable:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return _Unreadable(
            Rule.NOT_UTF8, f"not valid UTF-8 (first bad byte at column {error.start + 1})"
        )
    return text


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
