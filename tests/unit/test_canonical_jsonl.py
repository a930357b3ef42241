"""One canonical JSONL contract, end to end: what the dataset service writes, every reader reads.

Rows whose text holds characters Unicode counts as line breaks (U+0085, U+2028, U+2029 go into
canonical JSON raw) used to be cut in two by the trainer's and the evaluator's reader. Here the
one reader (:mod:`shared.canonical_jsonl`) and each service's way of reading through it are
checked on arbitrary Unicode rows, and a guard scans the code for any other reader that splits
lines the way ``str.splitlines`` does before parsing JSON.
"""

from __future__ import annotations

import ast
import hashlib
import io
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.dataset.domain.characters import first_control_character, is_blank
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.rules import Severity
from services.dataset.domain.validation import StreamingValidator
from services.splitter.adapters.artifacts import read_split_rows
from services.splitter.domain import DatasetVersionRef
from shared.artifacts import LocalArtifactStore
from shared.canonical_jsonl import (
    CanonicalJsonlError,
    CanonicalJsonlReader,
    NotUtf8Error,
    canonical_line,
    read_rows,
)
from shared.modeling import DataUnavailable, read_canonical_rows
from shared.modeling.data import parse_canonical_jsonl
from shared.task_types import TaskType

REPO = Path(__file__).resolve().parents[2]

#: What ``str.splitlines`` breaks at besides ``\n`` and ``\r``; JSON escapes the ASCII ones,
#: the others go into canonical JSON as they are.
LINE_BREAKERS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_specials = st.sampled_from(
    [*LINE_BREAKERS, "\n", "\r", "\t", "\x00", "\u0301", "\u200d", "\ufeff", "\U0001f3ac", '"']
)
_any_text = st.text(
    st.one_of(st.characters(codec="utf-8", exclude_categories=("Cs",)), _specials),
    min_size=1,
    max_size=40,
)


def _rows(text: st.SearchStrategy[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
    row = st.fixed_dictionaries(
        {"text": text, "label": st.sampled_from(["pos", "neg", "n\u2028eu"])},
        optional={"slice": text, "group": text},
    )
    return st.lists(row, min_size=1, max_size=12).map(
        lambda rows: [{**row, "id": f"r-{i}"} for i, row in enumerate(rows)]
    )


def _content(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(canonical_line(row) for row in rows)


def test_a_row_with_a_line_separator_reads_back_whole_for_the_trainer_and_evaluator() -> None:
    rows = [
        {"id": f"r-{i}", "label": "pos", "text": f"one{c}row"}
        for i, c in enumerate("\x85\u2028\u2029")
    ]
    content = _content(rows)
    assert "\u2028".encode() in content  # raw, not escaped: a splitlines reader cut it here
    assert parse_canonical_jsonl(content) == rows


@settings(max_examples=300, deadline=None)
@given(rows=_rows(_any_text), chunk_bytes=st.integers(1, 64))
def test_every_row_reads_back_identical_whatever_the_chunks(
    rows: list[dict[str, Any]], chunk_bytes: int
) -> None:
    content = _content(rows)
    reader = CanonicalJsonlReader(io.BytesIO(content), chunk_bytes=chunk_bytes)
    assert list(reader) == rows
    assert (reader.lines, reader.size) == (len(rows), len(content))
    assert reader.digest.hexdigest() == hashlib.sha256(content).hexdigest()
    assert read_rows(content) == rows
    assert parse_canonical_jsonl(content) == rows  # the trainer's and the evaluator's reader


def _splitter_version(folder: Path, content: bytes, rows: int) -> DatasetVersionRef:
    path = folder / "dataset" / "content.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return DatasetVersionRef(
        name="datasets/d/versions/v1",
        dataset="datasets/d",
        content_sha256=hashlib.sha256(content).hexdigest(),
        artifact_uri=path.as_uri(),
        task_type=TaskType.CLASSIFICATION,
        row_count=rows,
        byte_count=len(content),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_rows(_any_text))
def test_the_splitter_reads_every_row_and_only_those(rows: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        version = _splitter_version(root, _content(rows), len(rows))
        store = LocalArtifactStore(root / "splitter", readable_roots=[root])
        split_rows = read_split_rows(store, version)
    assert split_rows.ids == [row["id"] for row in rows]
    assert split_rows.labels == [row["label"] for row in rows]
    assert len(split_rows) == len(rows)


#: Text the dataset service accepts: something visible, no control character that is not text.
_accepted_text = st.text(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)).filter(
            lambda c: first_control_character(c) < 0
        ),
        _specials.filter(lambda c: first_control_character(c) < 0),
    ),
    min_size=1,
    max_size=40,
).filter(lambda text: not is_blank(text))
_LENIENT = SchemaPolicy(
    min_rows_per_class=1, rule_severities={"conflicting_labels": Severity.WARNING}
).resolved(TaskType.CLASSIFICATION)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_rows(_accepted_text))
@example(rows=[{"id": "r-0", "label": "n\u2028eu", "text": "a\x85\u2028\u2029\t\n\rb"}])
def test_the_dataset_service_writes_canonical_content_back_byte_for_byte(
    rows: list[dict[str, Any]],
) -> None:
    content = _content(rows)
    written = bytearray()
    validator = StreamingValidator(
        TaskType.CLASSIFICATION, _LENIENT, written.extend, max_line_bytes=1 << 20
    )
    validator.feed(content)
    result = validator.finish()
    assert not result.has_errors, result.findings
    assert bytes(written) == content
    assert result.row_count == len(rows)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"id":"a"}\n\n', "line 2: not JSON"),
        (b'{"id":"a"}\n{"id":"b"} \n', "line 2: data after the JSON value"),
        (b'{"id":"a"}\n[1]\n', "line 2: not a JSON object"),
        (b'{"id":"a"}\n{"id":1}\n', "line 2: not a row with a string 'id'"),
        (b'{"id":"a"}\n{"id":"b","text":"\xff"}\n', "line 2: not UTF-8 at byte 29"),
    ],
)
def test_what_is_not_canonical_jsonl_is_named_by_line(content: bytes, problem: str) -> None:
    for chunk_bytes in (1, 5, 1 << 20):
        with pytest.raises(CanonicalJsonlError) as raised:
            list(CanonicalJsonlReader(io.BytesIO(content), chunk_bytes=chunk_bytes))
        assert str(raised.value) == problem
    assert isinstance(raised.value, NotUtf8Error) == ("UTF-8" in problem)


def test_the_trainer_and_evaluator_reader_says_which_line(tmp_path: Path) -> None:
    path = tmp_path / "content.jsonl"
    path.write_bytes(b'{"id":"a"}\n{"id":"b"\n')
    with pytest.raises(DataUnavailable, match=r"is not canonical JSONL: line 2: not JSON"):
        read_canonical_rows(path)


# -- the guard: no other way of reading canonical JSONL ----------------------------------------

#: Calls that split text where Unicode sees line breaks (U+2028, U+0085 …), not only at "\n".
_LINE_SPLITTERS = frozenset({"splitlines", "readlines"})
#: ``json.<name>`` that parse JSON, and methods of a decoder that do.
_JSON_FUNCTIONS = frozenset({"loads", "load", "JSONDecoder"})
_DECODER_METHODS = frozenset({"scan_once", "raw_decode"})
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _nodes(scope: ast.AST, *, into_functions: bool) -> list[ast.AST]:
    nodes, stack = [], list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        nodes.append(node)
        if into_functions or not isinstance(node, _FUNCTIONS):
            stack.extend(ast.iter_child_nodes(node))
    return nodes


def _splits_lines_and_parses_json(tree: ast.Module) -> list[int]:
    """Line numbers of functions (or module code) that split text into lines with
    ``splitlines``/``readlines`` and also parse JSON: the shape of a JSONL reader that cuts
    rows at U+2028."""
    found = []
    scopes = [(tree, 1, False)] + [
        (node, node.lineno, True) for node in ast.walk(tree) if isinstance(node, _FUNCTIONS)
    ]
    for scope, line, into_functions in scopes:
        attributes = [
            n for n in _nodes(scope, into_functions=into_functions) if isinstance(n, ast.Attribute)
        ]
        names = {node.attr for node in attributes}
        parses_json = bool(names & _DECODER_METHODS) or any(
            node.attr in _JSON_FUNCTIONS
            and isinstance(node.value, ast.Name)
            and node.value.id == "json"
            for node in attributes
        )
        if names & _LINE_SPLITTERS and parses_json:
            found.append(line)
    return found


def test_the_guard_recognises_a_splitlines_jsonl_reader() -> None:
    old_reader = """
def parse_canonical_jsonl(data: bytes) -> list:
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        rows.append(json.loads(line))
    return rows
"""
    assert _splits_lines_and_parses_json(ast.parse(old_reader)) == [2]
    reads_a_file = "rows = [json.loads(line) for line in open(path).readlines()]\n"
    assert _splits_lines_and_parses_json(ast.parse(reads_a_file)) == [1]
    fine = "first_line = str(error).splitlines()[0]\n"
    assert _splits_lines_and_parses_json(ast.parse(fine)) == []


def test_no_module_reads_jsonl_by_splitting_text_into_unicode_lines() -> None:
    offenders = []
    for top in ("services", "shared", "tuneline"):
        for path in sorted((REPO / top).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            offenders += [
                f"{path.relative_to(REPO)}:{line}" for line in _splits_lines_and_parses_json(tree)
            ]
    assert offenders == [], (
        "JSON parsed from lines split by splitlines/readlines, which also break at U+2028, "
        "U+0085 …: read canonical JSONL with shared.canonical_jsonl"
    )
