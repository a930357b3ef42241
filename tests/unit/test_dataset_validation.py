"""The streaming validator's own guarantees: chunking never matters, memory stays bounded, the
canonical serialisation is exactly DATA.md's, and worker processes give the same result."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sys
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any
from unittest import mock

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dataset.domain import rows
from services.dataset.domain.characters import first_control_character, is_blank
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.rows import (
    RowRules,
    canonical_json,
    canonical_members,
    check_block,
    plain_text,
    with_id,
)
from services.dataset.domain.rules import Severity
from services.dataset.domain.validation import StreamingValidator, ValidationResult
from shared.input_text import normalize_input_text
from shared.task_types import TaskType
from tests.fixtures.datasets import rotten_tomatoes_rows, to_jsonl
from tests.fixtures.upload_fuzz import uploads

POLICY = SchemaPolicy(min_rows_per_class=1).resolved(TaskType.CLASSIFICATION)
RULES = RowRules.of(TaskType.CLASSIFICATION, POLICY, max_line_bytes=1 << 20)


def validate(
    chunks: list[bytes], *, policy: SchemaPolicy = POLICY, **options: Any
) -> tuple[ValidationResult, bytes]:
    written = bytearray()
    validator = StreamingValidator(
        TaskType.CLASSIFICATION,
        policy,
        written.extend,
        max_line_bytes=options.pop("max_line_bytes", 1 << 20),
        **options,
    )
    for chunk in chunks:
        validator.feed(chunk)
    return validator.finish(), bytes(written)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# a mixed upload: valid rows, a repeat, a BOM, CRLF, blank and broken lines, multi-byte text
MIXED = (
    b"\xef\xbb\xbf"
    + to_jsonl(rotten_tomatoes_rows(30), newline="\r\n")
    + '{"text": "d\u00e9j\u00e0 vu \u2014 \U0001f3ac", "label": "fresh"}\n'.encode()
    + b"\n"
    + b"\xc3\x28 not utf-8\n"
    + to_jsonl(rotten_tomatoes_rows(2))
    + b'{"text": "cut'
)


# the same without the errors: accepted, so its canonical content is written out in full
ACCEPTED = MIXED.replace(b"\xc3\x28 not utf-8\n", b"").rsplit(b"\n", 1)[0] + b"\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=12))
def test_chunk_boundaries_never_change_the_outcome(cuts: list[int]) -> None:
    expected, _ = validate([MIXED], block_bytes=64)
    assert validate(split_at(MIXED, cuts), block_bytes=64)[0] == expected
    accepted = validate([ACCEPTED], block_bytes=64)
    assert validate(split_at(ACCEPTED, cuts), block_bytes=64) == accepted
    assert not accepted[0].has_errors
    assert accepted[1].count(b"\n") == accepted[0].row_count == 33
    result = expected
    assert {f.rule.value: f.line_numbers for f in result.findings} == {
        "bom": (1,),
        "crlf_line_end": tuple(range(1, 21)),  # 30 of them; a report keeps the first 20
        "blank_line": (32,),
        "duplicate_row": (34, 35),
        "not_utf8": (33,),
        "truncated_last_line": (36,),
    }
    assert result.lines_read == 36
    assert result.bytes_read == len(MIXED)
    assert result.source_sha256 == hashlib.sha256(MIXED).hexdigest()


def test_a_long_line_is_never_buffered() -> None:
    validator = StreamingValidator(
        TaskType.CLASSIFICATION, POLICY, lambda _: None, max_line_bytes=4096, block_bytes=1024
    )
    validator.feed(b'{"text": "fine", "label": "a"}\n{"text": "')
    for _ in range(1000):  # 1 MB of one line, 1 KB at a time
        validator.feed(b"z" * 1024)
        assert len(validator._buffer) <= 4096
    validator.feed(b'", "label": "b"}\n{"text": "also fine", "label": "b"}\n')
    result = validator.finish()
    assert {f.rule.value: f.line_numbers for f in result.findings} == {"line_too_long": (2,)}
    assert (result.row_count, result.lines_read) == (2, 3)


def test_nothing_is_written_once_the_content_is_known_to_be_rejected() -> None:
    rows = rotten_tomatoes_rows(200)
    content = to_jsonl(rows[:100]) + b"oops\n" + to_jsonl(rows[100:])
    result, written = validate([content], block_bytes=1024)
    assert result.has_errors
    assert len(written) < len(content) / 2  # only blocks before the bad line went out


_member_values = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["fresh", "rotten", "a movie", " ", "x  y", "ÉTÉ", "\u200b"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([1.5, float("nan"), float("inf"), None, True]),
    st.lists(st.sampled_from(["p", "q", "text"]), max_size=3),  # quotes that are not members
)


@st.composite
def _objects_written_by_hand(draw: st.DrawFn) -> bytes:
    """Lines of objects as a careless producer writes them: keys may repeat, whitespace
    varies, NaN and big integers appear (what a JSON library never writes, so ``uploads``
    rarely has them)."""
    lines = []
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        members = draw(
            st.lists(
                st.tuples(st.sampled_from(["text", "label", "group", "id", "x"]), _member_values),
                max_size=5,
            )
        )
        space = draw(st.sampled_from(["", " ", "\t", "  "]))
        body = ("," + space).join(
            f"{json.dumps(key)}:{space}{json.dumps(value, ensure_ascii=False)}"
            for key, value in members
        )
        lines.append(f"{space}{{{body}}}{space}".encode("utf-8", "surrogatepass"))
    return b"\n".join(lines) + draw(st.sampled_from([b"\n", b""]))


@given(
    content=st.one_of(uploads, _objects_written_by_hand()),
    task=st.sampled_from([TaskType.CLASSIFICATION, TaskType.CAUSAL_LM]),
    max_line_bytes=st.sampled_from([64, 1 << 20]),
)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_fast_parser_finds_and_writes_exactly_what_the_reference_parser_does(
    content: bytes, task: TaskType, max_line_bytes: int
) -> None:
    """orjson parses most lines; json's scanner (the reference: duplicate keys, lone
    surrogates, NaN, big integers, the wording of every finding) whatever orjson refuses. With
    orjson refusing every line, each block must come out byte for byte the same."""
    policy = SchemaPolicy(min_rows_per_class=1).resolved(task)
    rules = replace(
        RowRules.of(task, policy, max_line_bytes=max_line_bytes), near_duplicate_texts=True
    )
    unterminated = not content.endswith(b"\n")
    fast = check_block(content, 7, rules, unterminated=unterminated)
    refused = orjson.JSONDecodeError("refused", "", 0)
    with mock.patch.object(rows.orjson, "loads", side_effect=refused):
        reference = check_block(content, 7, rules, unterminated=unterminated)
    assert vars(fast) == vars(reference)


def test_worker_processes_give_the_same_result_as_the_calling_thread() -> None:
    content = to_jsonl(rotten_tomatoes_rows(3000)) + MIXED[3:]  # no BOM mid-file
    in_thread = validate([content], block_bytes=16 * 1024)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        in_workers = validate([content], block_bytes=16 * 1024, executor=pool, max_in_flight=3)
    assert in_workers == in_thread
    assert in_thread[0].row_count == 3000 + 30 + 1 + 2
    assert {f.rule.value for f in in_thread[0].findings} == {
        "crlf_line_end",
        "blank_line",
        "duplicate_row",
        "not_utf8",
        "truncated_last_line",
    }


def test_severity_overrides_keep_or_drop_rows() -> None:
    rows = [*rotten_tomatoes_rows(20), {"text": "   ", "label": "fresh"}]
    strict, _ = validate([to_jsonl(rows)])
    assert strict.row_count == 20
    assert strict.has_errors
    lenient = SchemaPolicy(min_rows_per_class=1, rule_severities={"empty_text": Severity.WARNING})
    relaxed, written = validate([to_jsonl(rows)], policy=lenient.resolved(TaskType.CLASSIFICATION))
    assert relaxed.row_count == 21
    assert not relaxed.has_errors
    assert written.endswith(b',"label":"fresh","text":"   "}\n')


# -- the canonical serialisation --------------------------------------------------------------

_char = st.characters(codec="utf-8", exclude_categories=("Cs",))
_text = st.text(_char, max_size=30)
#: Text the text rules accept: no control character that is not text (``control_character``).
_clean_text = st.text(_char.filter(lambda c: first_control_character(c) < 0), max_size=30)


def _rows_of(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"text": text, "label": text},
        optional={
            "group": text,
            "completion": text,
            "slice": text,
            "tags": st.lists(text, max_size=3),
            "weight": st.one_of(st.integers(0, 10**30), st.floats(0, 1e300)),
            "messages": st.lists(
                st.fixed_dictionaries({"role": text, "content": text}), max_size=2
            ),
        },
    )


_rows = _rows_of(_text)


@settings(max_examples=200, deadline=None)
@given(row=_rows, row_id=_text.filter(bool))
def test_splicing_the_id_equals_serialising_the_row_with_it(
    row: dict[str, Any], row_id: str
) -> None:
    reference = json.dumps(
        {**row, "id": row_id}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    members = canonical_members(row)
    assert "{" + ",".join(members) + "}" == canonical_json(row)
    assert with_id(members, row_id) == reference


def _reference_line(row: dict[str, Any]) -> bytes:
    row_id = "r-" + hashlib.sha256(canonical_json(row).encode()).hexdigest()[:16]
    return (canonical_json({**row, "id": row_id}) + "\n").encode()


_nonblank = _clean_text.filter(lambda t: not is_blank(t))


@settings(max_examples=300, deadline=None)
@given(text=_nonblank, label=_nonblank, group=st.one_of(st.none(), _nonblank))
def test_the_inline_fast_path_writes_data_md_canonical_rows(
    text: str, label: str, group: str | None
) -> None:
    row = (
        {"text": text, "label": label}
        if group is None
        else {"group": group, "text": text, "label": label}
    )
    result = check_block(json.dumps(row).encode() + b"\n", 1, RULES)
    assert result.findings == []
    assert result.content == _reference_line(row)
    assert (
        bytes(result.input_keys) == hashlib.sha256(normalize_input_text(text).encode()).digest()[:8]
    )


def test_a_repeated_key_is_found_in_a_block_without_backslashes() -> None:
    """orjson merges a repeated key; the fast path finds one by counting quotes, once per
    block when the block has no backslash (a row of strings has four per member): a row that
    repeats a key, among rows that do not, is refused as the reference parser refuses it."""
    good = [{"text": f"review {i} \u2019s fine", "label": "fresh"} for i in range(50)]
    repeated = '{"text": "same key twice", "label": "fresh", "label": "rotten"}\n'
    block = b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in good)
    block = block + repeated.encode()
    assert b"\\" not in block
    result = check_block(block, 1, RULES)
    assert [(f.rule, f.line) for f in result.findings] == [("duplicate_key", 51)]
    assert result.content == b"".join(_reference_line(row) for row in good)


def test_text_to_escape_is_escaped_whether_or_not_the_rest_of_its_block_needs_it() -> None:
    """A block with no backslash and no control character spares each row its own check for
    something to escape; a block that has one must check every row."""
    plain = {"text": "a plain “review”, nothing to escape", "label": "fresh"}
    escaped = [
        {"text": 'she said "no"', "label": "rotten"},
        {"text": "a \\ backslash", "label": "fresh"},
        {"text": "a\ttab", "label": "fresh"},
    ]
    for rows_of_block in ([plain], [plain, *escaped], [*escaped, plain]):
        block = b"".join(json.dumps(row).encode() + b"\n" for row in rows_of_block)
        result = check_block(block, 1, RULES)
        assert result.findings == []
        assert result.content == b"".join(_reference_line(row) for row in rows_of_block)


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(
        st.text(
            st.sampled_from(" aB\u00e9\u2019\u2014\u00c9\u0301\u00a0"), min_size=1, max_size=12
        ),
        min_size=1,
        max_size=6,
    ).filter(lambda texts: not any(is_blank(text) for text in texts)),
    member_separator=st.sampled_from([",", ", ", ",  "]),
)
def test_each_row_of_an_unescaped_block_is_written_as_it_would_be_alone(
    texts: list[str], member_separator: str
) -> None:
    """Rows written without escapes (``ensure_ascii=False``) take the fast path, which decides
    once per block whether two spaces follow each other anywhere (in a text or between
    members) and caches its verdict on a text's non-ASCII characters: neither may change any
    row's canonical line or input key, whatever the other rows of the block hold."""
    rows_of_block = [{"text": text, "label": "fresh"} for text in texts]
    block = b"".join(
        json.dumps(row, ensure_ascii=False, separators=(member_separator, ": ")).encode() + b"\n"
        for row in rows_of_block
    )
    for _ in range(2):  # the second time, every verdict on non-ASCII characters is cached
        result = check_block(block, 1, RULES)
        assert result.findings == []
        assert result.content == b"".join(_reference_line(row) for row in rows_of_block)
        assert bytes(result.input_keys) == b"".join(
            hashlib.sha256(normalize_input_text(text).encode()).digest()[:8] for text in texts
        )


@settings(max_examples=200, deadline=None)
@given(
    row=_rows_of(_clean_text).filter(lambda r: not (is_blank(r["text"]) or is_blank(r["label"])))
)
def test_the_general_path_writes_data_md_canonical_rows(row: dict[str, Any]) -> None:
    row = {k: v for k, v in row.items() if k not in ("completion", "messages")}
    if "tags" in row and any(is_blank(t) for t in row["tags"]):
        del row["tags"]
    for name in ("group", "slice"):
        if name in row and is_blank(row[name]):
            del row[name]
    result = check_block(json.dumps(row).encode() + b"\n", 1, RULES)
    assert result.findings == []
    expected = dict(row)
    if row.get("tags") and "slice" not in row:
        expected["slice"] = row["tags"][0]
    assert result.content == _reference_line(expected)


def test_what_the_fast_normalization_relies_on_holds_for_every_code_point() -> None:
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        folded = char.casefold()
        assert folded, hex(code)
        assert folded.isprintable() == char.isprintable(), hex(code)
        assert (" " in folded) == (char == " "), hex(code)
        if char.isspace() and char != " ":
            assert not char.isprintable(), hex(code)


@settings(max_examples=500, deadline=None)
@given(
    text=st.text(
        st.one_of(
            st.characters(codec="utf-8", exclude_categories=("Cs",)),
            st.sampled_from(' \t"\\\x7fAbc\u00e9\u0301\u00a0\u2019\u2014\u00df\ufb01\u1161'),
        ),
        max_size=30,
    )
)
def test_the_plain_text_shortcut_agrees_with_json_and_data_md(text: str) -> None:
    plain = plain_text(text)
    if plain is None:
        return
    raw, folded = plain
    assert raw == text.encode()
    assert json.dumps(text, ensure_ascii=False) == f'"{text}"'
    reference = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    assert folded == reference.encode()


def test_the_plain_text_shortcut_takes_typical_text_and_declines_the_rest() -> None:
    assert plain_text("It\u2019s a \u201cfine\u201d film \u2014 really.") is not None
    for tricky in ("CAF\u00c9", "e\u0301", "\ufb01ne", "tab\there", 'a "quote"', "nbsp\u00a0"):
        assert plain_text(tricky) is None, tricky


# -- causal-LM rows that declare a JSON schema --------------------------------------------------


def test_a_causal_lm_row_keeps_its_json_schema_and_a_bad_schema_is_refused() -> None:
    policy = SchemaPolicy().resolved(TaskType.CAUSAL_LM)
    schema = {"type": "object", "required": ["city"]}
    rows = [
        {
            "prompt": "Where? Answer in JSON.",
            "completion": '{"city": "Paris"}',
            "json_schema": schema,
        },
        {"prompt": "Any JSON.", "completion": "[1, 2]", "json_schema": {}},
    ]
    written = bytearray()
    validator = StreamingValidator(
        TaskType.CAUSAL_LM, policy, written.extend, max_line_bytes=1 << 20
    )
    validator.feed(to_jsonl(rows))
    result = validator.finish()
    assert result.row_count == 2
    assert not result.has_errors
    kept = [json.loads(line) for line in bytes(written).splitlines()]
    assert [row["json_schema"] for row in kept] == [schema, {}]

    for bad in ("an object", {"type": "no-such-type"}):
        refused = StreamingValidator(
            TaskType.CAUSAL_LM, policy, lambda _: None, max_line_bytes=1 << 20
        )
        refused.feed(to_jsonl([{"prompt": "p", "completion": "c", "json_schema": bad}]))
        outcome = refused.finish()
        assert outcome.row_count == 0
        assert any(
            f.rule == "wrong_type" and "json_schema" in f.message for f in outcome.findings
        ), outcome.findings
