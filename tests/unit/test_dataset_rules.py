"""Every validation rule, one bad input each, through the upload handler on real local parts.

Each rejection asserts the gRPC status the error maps to (INVALID_ARGUMENT with a BadRequest
violation per error finding, the report's name in ErrorInfo), the report's findings with their
line numbers, and that nothing but the report was stored: no version, no artifact, no temp
file, no event in the outbox.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.rpc import code_pb2, error_details_pb2
from sqlalchemy import func, select

from services.dataset.domain.datasets import UploadInterrupted
from services.dataset.domain.policy import DEFAULT_VALUE_BOUNDS, SchemaPolicy, ValueBounds
from services.dataset.domain.reports import Finding, Outcome, SourceKind, ValidationReport
from services.dataset.domain.rules import Severity
from services.dataset.handlers.datasets import create_dataset, get_dataset
from services.dataset.handlers.deps import DatasetDeps
from services.dataset.handlers.ingest import IngestRequest, IngestResult, upload_version
from services.dataset.handlers.versions import get_report, list_reports, list_versions
from services.dataset.settings import DatasetSettings
from shared.canonical_jsonl import Row, read_rows
from shared.errors import InvalidArgument
from shared.events import OutboxEvent
from shared.grpc.errors import to_rpc_status
from shared.task_types import TaskType
from tests.fixtures.datasets import (
    make_dataset_deps,
    rotten_tomatoes_rows,
    stored_artifacts,
    to_jsonl,
)

#: 22 fresh and 18 rotten real reviews: valid under the default policy.
BASE = rotten_tomatoes_rows(40)


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[DatasetDeps]:
    deps = make_dataset_deps(tmp_path, max_upload_bytes=200_000, max_line_bytes=4096)
    yield deps
    deps.sessions.kw["bind"].dispose()


def create(deps: DatasetDeps, task: TaskType = TaskType.CLASSIFICATION, **policy: Any) -> str:
    severities = {rule: Severity(level) for rule, level in policy.pop("severities", {}).items()}
    with deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="reviews",
            task_type=task,
            policy=SchemaPolicy(rule_severities=severities, **policy),
        )
    return "datasets/reviews"


def upload(deps: DatasetDeps, content: bytes, *, chunk: int = 1000, **request: Any) -> IngestResult:
    chunks = [content[i : i + chunk] for i in range(0, len(content), chunk)]
    return upload_version(
        deps,
        IngestRequest(dataset="datasets/reviews", source_kind=SourceKind.UPLOAD, **request),
        iter(chunks),
    )


def stored_rows(deps: DatasetDeps, result: IngestResult) -> list[Row]:
    """The rows of an accepted upload's version, as every service reads them."""
    assert result.version is not None
    return read_rows(deps.store.local_path(result.version.artifact_uri).read_bytes())


def lines(rows: list[dict[str, Any]]) -> list[bytes]:
    return to_jsonl(rows).splitlines(keepends=True)


def with_lines(inserted: dict[int, bytes], rows: list[dict[str, Any]] = BASE) -> bytes:
    """``rows`` as JSONL with each inserted line becoming the line number it is keyed by."""
    content = lines(rows)
    for number, line in sorted(inserted.items()):
        content.insert(number - 1, line)
    return b"".join(content)


def with_line(number: int, line: bytes, rows: list[dict[str, Any]] = BASE) -> bytes:
    return with_lines({number: line}, rows)


@dataclass
class Rejection:
    violations: list[error_details_pb2.BadRequest.FieldViolation]
    report: ValidationReport
    message: str
    finding: dict[str, Finding] = field(default_factory=dict)


def rejected(deps: DatasetDeps, content: bytes, **request: Any) -> Rejection:
    """Upload ``content``, expect a rejection, and check that only the report was stored."""
    with pytest.raises(InvalidArgument) as caught:
        upload(deps, content, **request)
    status = to_rpc_status(caught.value)
    assert status.code == code_pb2.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert any(d.Unpack(bad_request) for d in status.details)
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    with deps.sessions() as session:
        report = get_report(session, info.metadata["report"])
    assert report.summary.outcome is Outcome.REJECTED
    assert_only_report_stored(deps, report)
    errors = [f for f in report.findings if f.severity is Severity.ERROR]
    # one violation per error finding: field and reason = the rule id
    assert [(v.field, v.reason) for v in bad_request.field_violations] == [
        (f.rule.value, f.rule.value) for f in errors
    ]
    return Rejection(
        violations=list(bad_request.field_violations),
        report=report,
        message=status.message,
        finding={f.rule.value: f for f in report.findings},
    )


def assert_only_report_stored(deps: DatasetDeps, report: ValidationReport) -> None:
    with deps.sessions() as session:
        dataset = get_dataset(session, "datasets/reviews")
    assert (dataset.version_count, dataset.latest_version) == (0, "")
    with deps.sessions() as session:
        assert (
            list_versions(session, parent="datasets/reviews", page_size=0, page_token="")[0] == []
        )
    with deps.sessions() as session:
        reports, _ = list_reports(
            session, parent="datasets/reviews", page_size=0, page_token="", outcome=None
        )
    assert [r.name for r in reports] == [report.name]
    assert stored_artifacts(deps.store.root) == [], "no artifact and no temp file"
    with deps.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 0


# -- one test per bad input ---------------------------------------------------------------------


def test_not_utf8_names_the_line_and_the_column(deps: DatasetDeps) -> None:
    create(deps)
    result = rejected(deps, with_line(3, b'{"text": "caf\xe9 cr\xe8me", "label": "fresh"}\n'))
    finding = result.finding["not_utf8"]
    assert (finding.count, finding.line_numbers) == (1, (3,))
    assert "column 14" in finding.message  # the first byte that is not UTF-8
    assert result.violations[0].description.startswith("line 3: not valid UTF-8")


def test_a_line_that_is_not_json_and_one_that_is_not_an_object(deps: DatasetDeps) -> None:
    create(deps)
    content = with_lines(
        {5: b'{"text": "unterminated, "label": "fresh"}\n', 9: b'["a list", "fresh"]\n'}
    )
    result = rejected(deps, content)
    finding = result.finding["not_json_object"]
    assert (finding.count, finding.line_numbers) == (2, (5, 9))


def test_truncated_last_line(deps: DatasetDeps) -> None:
    create(deps)
    content = to_jsonl(BASE) + b'{"text": "the upload was cut off in the mid'
    result = rejected(deps, content)
    assert result.finding["truncated_last_line"].line_numbers == (len(BASE) + 1,)
    assert set(result.finding) == {"truncated_last_line"}


def test_a_stream_that_ends_after_its_client_went_away_stores_nothing(deps: DatasetDeps) -> None:
    """gRPC may end a cancelled upload's stream as if it were finished before the call is
    known to be cancelled: the cut content must not become a rejected report (or a version)."""
    create(deps)
    content = to_jsonl(BASE) + b'{"text": "the client cancelled in the mid'
    with pytest.raises(UploadInterrupted):
        upload_version(
            deps,
            IngestRequest(dataset="datasets/reviews", source_kind=SourceKind.UPLOAD),
            iter([content]),
            still_connected=lambda: False,
        )
    with deps.sessions() as session:
        reports, _ = list_reports(
            session, parent="datasets/reviews", page_size=0, page_token="", outcome=None
        )
    assert reports == []
    with deps.sessions() as session:
        assert get_dataset(session, "datasets/reviews").version_count == 0
    assert stored_artifacts(deps.store.root) == [], "no artifact and no temp file"


def test_a_complete_last_line_without_line_end_is_fine(deps: DatasetDeps) -> None:
    create(deps)
    result = upload(deps, to_jsonl(BASE).rstrip(b"\n"))
    assert result.created
    assert result.version is not None
    assert result.version.row_count == len(BASE)


def test_missing_field(deps: DatasetDeps) -> None:
    create(deps)
    result = rejected(deps, with_line(4, b'{"text": "no label on this one"}\n'))
    finding = result.finding["missing_field"]
    assert (finding.line_numbers, finding.field) == ((4,), "label")
    assert "'label' is required" in result.violations[0].description


def test_mistyped_field(deps: DatasetDeps) -> None:
    create(deps)
    result = rejected(deps, with_line(6, b'{"text": 42, "label": "fresh"}\n'))
    finding = result.finding["wrong_type"]
    assert (finding.line_numbers, finding.field) == ((6,), "text")
    assert "not number" in finding.message


@pytest.mark.parametrize("text", ["", "   \t  "])
def test_empty_or_whitespace_text(deps: DatasetDeps, text: str) -> None:
    create(deps)
    line = json.dumps({"text": text, "label": "fresh"}).encode() + b"\n"
    result = rejected(deps, with_line(2, line))
    finding = result.finding["empty_text"]
    assert (finding.line_numbers, finding.field) == ((2,), "text")


def test_text_over_the_length_limit(deps: DatasetDeps) -> None:
    create(deps, max_text_length=250)  # the longest real review here has 199 characters
    line = json.dumps({"text": "x" * 251, "label": "rotten"}).encode() + b"\n"
    result = rejected(deps, with_line(11, line))
    finding = result.finding["text_too_long"]
    assert (finding.line_numbers, finding.field) == ((11,), "text")
    assert "251 characters long, more than 250" in finding.message


def test_exact_duplicate_rows_when_the_policy_makes_them_errors(deps: DatasetDeps) -> None:
    create(deps, severities={"duplicate_row": "error"})
    content = with_line(8, lines(BASE)[1])  # line 8 repeats line 2
    result = rejected(deps, content)
    assert result.finding["duplicate_row"].line_numbers == (8,)


def test_the_same_input_with_conflicting_labels(deps: DatasetDeps) -> None:
    create(deps)
    first = BASE[0]  # a fresh review; the same words, re-cased and re-spaced, labelled rotten
    clash = {"text": "  " + first["text"].upper().replace(" ", "   ") + " ", "label": "rotten"}
    result = rejected(deps, with_line(20, json.dumps(clash).encode() + b"\n"))
    finding = result.finding["conflicting_labels"]
    assert (finding.line_numbers, finding.field) == ((20,), "label")
    assert "'rotten' contradicts label 'fresh'" in finding.message


def test_labels_outside_the_label_set(deps: DatasetDeps) -> None:
    create(deps, label_set=("fresh", "rotten"))
    content = with_lines(
        {3: b'{"text": "meh", "label": "neutral"}\n', 30: b'{"text": "fine", "label": "Fresh"}\n'}
    )
    result = rejected(deps, content)
    assert result.finding["label_not_in_set"].line_numbers == (3, 30)


def test_a_class_below_the_minimum_rows(deps: DatasetDeps) -> None:
    create(deps, label_set=("fresh", "rotten", "mixed"))
    content = to_jsonl([*BASE, {"text": "it was fine, I guess", "label": "mixed"}])
    result = rejected(deps, content)
    finding = result.finding["class_too_small"]
    assert finding.line_numbers == ()  # a dataset-wide finding
    assert "'mixed' (1)" in finding.message


def test_imbalance_above_the_ratio(deps: DatasetDeps) -> None:
    create(deps, max_imbalance_ratio=1.1, severities={"class_imbalance": "error"})
    result = rejected(deps, to_jsonl(BASE))  # 22 fresh / 18 rotten = 1.22
    assert "ratio 1.22 > 1.1" in result.finding["class_imbalance"].message


@pytest.mark.parametrize("content", [b"", b"\n\r\n  \n"], ids=["no bytes", "blank lines"])
def test_empty_dataset(deps: DatasetDeps, content: bytes) -> None:
    create(deps)
    result = rejected(deps, content)
    assert result.finding["empty_dataset"].count == 1
    assert result.report.summary.error_rules == ("empty_dataset",)


def test_upload_over_the_size_limit_stops_reading(deps: DatasetDeps) -> None:
    create(deps)
    content = to_jsonl(rotten_tomatoes_rows(3000))  # ~400 KB against a 200 KB limit
    result = rejected(deps, content, chunk=64 * 1024)
    assert "upload_too_large" in result.finding
    assert result.report.bytes_read <= 200_000


def test_declared_size_over_the_limit_is_rejected_before_reading(deps: DatasetDeps) -> None:
    create(deps)
    result = rejected(deps, to_jsonl(BASE), content_length=10**9)
    assert result.report.bytes_read == 0
    assert result.report.summary.error_rules == ("upload_too_large",)


def test_a_line_over_the_line_limit_is_skipped_unbuffered(deps: DatasetDeps) -> None:
    create(deps)
    huge = json.dumps({"text": "y" * 10_000, "label": "fresh"}).encode() + b"\n"
    result = rejected(deps, with_line(7, huge), chunk=512)
    assert result.finding["line_too_long"].line_numbers == (7,)
    assert set(result.finding) == {"line_too_long"}  # the lines after it are read normally


def test_two_rows_with_one_id(deps: DatasetDeps) -> None:
    create(deps)
    rows = [dict(row, id=f"row-{i}") for i, row in enumerate(BASE)]
    rows[12]["id"] = "row-3"
    result = rejected(deps, to_jsonl(rows))
    assert result.finding["duplicate_id"].line_numbers == (13,)


def test_declared_length_and_hash_must_match(deps: DatasetDeps) -> None:
    create(deps)
    content = to_jsonl(BASE)
    result = rejected(deps, content, content_length=len(content) + 1, content_sha256="0" * 64)
    assert set(result.report.summary.error_rules) == {
        "content_length_mismatch",
        "content_sha256_mismatch",
    }


def test_unknown_fields_when_the_policy_makes_them_errors(deps: DatasetDeps) -> None:
    create(deps, severities={"unknown_field": "error"})
    rows = [dict(row, movie="x") if i in (0, 5) else row for i, row in enumerate(BASE)]
    result = rejected(deps, to_jsonl(rows))
    finding = result.finding["unknown_field"]
    assert (finding.line_numbers, finding.count) == ((1, 6), 2)
    assert finding.message.endswith("dropped: movie")


@pytest.mark.parametrize(
    ("row", "rule", "field_name"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "missing_field", "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "wrong_type", "messages"),
        ({"prompt": "hi"}, "missing_field", "completion"),
        ({"prompt": "hi", "completion": " "}, "empty_text", "completion"),
        ({"prompt": "q", "completion": "a", "messages": []}, "wrong_type", "messages"),
        ({"prompt": "q", "completion": "a", "weight": -1}, "wrong_type", "weight"),
        ({"prompt": "q", "completion": "a", "tags": "x"}, "wrong_type", "tags"),
    ],
)
def test_causal_lm_rows(deps: DatasetDeps, row: dict[str, Any], rule: str, field_name: str) -> None:
    create(deps, TaskType.CAUSAL_LM)
    good = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(5)]
    result = rejected(deps, to_jsonl([*good[:2], row, *good[2:]]))
    finding = result.finding[rule]
    assert (finding.line_numbers, finding.field) == ((3,), field_name)


def test_reports_keep_the_first_line_numbers_and_count_all(tmp_path: Path) -> None:
    deps = make_dataset_deps(tmp_path, report_line_numbers=5)
    create(deps)
    rows = [*BASE, *({"text": f"review {i}"} for i in range(30))]
    result = rejected(deps, to_jsonl(rows))
    finding = result.finding["missing_field"]
    first = len(BASE) + 1
    assert finding.count == 30
    assert finding.line_numbers == tuple(range(first, first + 5))
    assert result.violations[0].description.startswith(
        f"lines {', '.join(str(n) for n in range(first, first + 5))} (30 in total): "
    )
    deps.sessions.kw["bind"].dispose()


def test_every_problem_of_a_bad_upload_is_reported_at_once(deps: DatasetDeps) -> None:
    create(deps)
    content = b"".join(
        [
            b'{"text": "ok", "label": "fresh"}\n',
            b"\xff\xfe\n",
            b"not json\n",
            b'{"label": "rotten"}\n',
            b'{"text": "", "label": "rotten"}\n',
        ]
    )
    result = rejected(deps, content)
    assert {rule: f.line_numbers for rule, f in result.finding.items()} == {
        "not_utf8": (2,),
        "not_json_object": (3,),
        "missing_field": (4,),
        "empty_text": (5,),
        "class_too_small": (),
    }
    assert result.report.lines_read == 5
    assert result.report.name in result.message


# -- what JSON allows but a row cannot mean (issue 12) -------------------------------------------


def test_a_lone_surrogate_escape_is_invalid_unicode_not_an_internal_error(
    deps: DatasetDeps,
) -> None:
    create(deps)
    content = with_lines(
        {
            3: b'{"text": "half an emoji \\ud83d here", "label": "fresh"}\n',
            7: b'{"text": "a fine text", "label": "\\udfff"}\n',
            9: b'{"text": "a fine text", "label": "fresh", "\\uD800": 1}\n',
            12: b'{"text": "a fine text", "label": "fresh", "tags": ["\\udc00"]}\n',
        }
    )
    result = rejected(deps, content)
    finding = result.finding["invalid_unicode"]
    assert (finding.count, finding.line_numbers) == (4, (3, 7, 9, 12))
    assert set(result.finding) == {"invalid_unicode"}
    assert result.violations[0].description.startswith("lines 3, 7, 9, 12: ")


def test_a_surrogate_pair_escape_is_one_character_and_fine(deps: DatasetDeps) -> None:
    create(deps)
    result = upload(
        deps, with_line(2, b'{"text": "a film \\ud83c\\udfac to see", "label": "fresh"}\n')
    )
    assert result.version is not None
    (row,) = [r for r in stored_rows(deps, result) if "\U0001f3ac" in r["text"]]
    assert row["text"] == "a film \U0001f3ac to see"


def test_a_key_repeated_in_one_object_is_ambiguous(deps: DatasetDeps) -> None:
    create(deps)
    content = with_lines(
        {
            4: b'{"text": "a fine text", "label": "fresh", "label": "rotten"}\n',
            6: b'{"text": "one", "label": "fresh", "text": "two"}\n',
        }
    )
    result = rejected(deps, content)
    finding = result.finding["duplicate_key"]
    assert (finding.count, finding.line_numbers) == (2, (4, 6))
    assert "the key label more than once" in finding.message


def test_a_repeated_key_is_found_whatever_the_values_and_spelling(deps: DatasetDeps) -> None:
    # lines without a backslash are parsed by counting their members (rows.check_lines): a
    # repeat hidden by a number, in a list, or spelled with an escape must still be found
    create(deps)
    content = with_lines(
        {
            2: b'{"text": "a fine text", "label": "fresh", "weight": 1, "weight": 2}\n',
            3: b'{"text": "a fine text", "label": "fresh", "tags": [{"k": 1, "k": 2}]}\n',
            5: b'{"text": "one", "label": "fresh", "te\\u0078t": "two"}\n',
            7: b'{"text": "text", "label": "fresh", "label": "text"}\n',
        }
    )
    result = rejected(deps, content)
    assert result.finding["duplicate_key"].line_numbers == (2, 3, 5, 7)


def test_a_repeated_key_inside_a_chat_message_is_ambiguous(deps: DatasetDeps) -> None:
    create(deps, TaskType.CAUSAL_LM)
    good = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(5)]
    chat = (
        b'{"messages": [{"role": "user", "content": "hi"}, '
        b'{"role": "assistant", "content": "hello", "content": "bye"}]}\n'
    )
    result = rejected(deps, b"".join([*lines(good[:2]), chat, *lines(good[2:])]))
    assert result.finding["duplicate_key"].line_numbers == (3,)


@pytest.mark.parametrize(
    ("escaped", "code"),
    [("\\u0000", "0000"), ("\\u001b", "001B"), ("\\u007f", "007F"), ("\\u0090", "0090")],
)
def test_control_characters_in_text_are_rejected(
    deps: DatasetDeps, escaped: str, code: str
) -> None:
    create(deps)
    content = with_lines(
        {
            2: f'{{"text": "nul{escaped}inside", "label": "fresh"}}\n'.encode(),
            5: f'{{"text": "a fine text", "label": "fr{escaped}esh"}}\n'.encode(),
            8: f'{{"text": "a fine text", "label": "fresh", "group": "g{escaped}"}}\n'.encode(),
        }
    )
    result = rejected(deps, content)
    found = {f.field: f for f in result.report.findings if f.rule.value == "control_character"}
    assert {field: f.line_numbers for field, f in found.items()} == {
        "text": (2,),
        "label": (5,),
        "group": (8,),
    }
    assert f"control character U+{code} at character 4" in found["text"].message


def test_a_policy_may_keep_control_characters_with_a_warning(deps: DatasetDeps) -> None:
    create(deps, severities={"control_character": "warning"})
    result = upload(deps, with_line(2, b'{"text": "nul\\u0000inside", "label": "fresh"}\n'))
    assert result.version is not None
    finding = {f.rule.value: f for f in result.report.findings}["control_character"]
    assert (finding.severity, finding.line_numbers) == (Severity.WARNING, (2,))
    assert "nul\x00inside" in [row["text"] for row in stored_rows(deps, result)]


def test_line_and_paragraph_separators_tabs_and_next_line_are_text(deps: DatasetDeps) -> None:
    create(deps)
    texts = ["two\u2028lines", "two\u2029paragraphs", "next\u0085line", "tab\tand\r\nbreak"]
    rows = [*BASE, *({"text": text, "label": "fresh"} for text in texts)]
    result = upload(deps, to_jsonl(rows))
    assert result.version is not None
    assert result.report.findings == ()
    assert [row["text"] for row in stored_rows(deps, result)][-4:] == texts


@pytest.mark.parametrize(
    "invisible",
    [
        "\u200b",  # zero width space
        "\u200b\u200c\u200d",  # and non-joiner, joiner
        "\u2060\ufeff",  # word joiner, zero width no-break space
        " \u00ad\u200e ",  # soft hyphen, left-to-right mark, between spaces
        "\u3164\u115f",  # Hangul fillers
        "\ufe0f\U000e0041",  # a variation selector, a tag character
        "\u2800",  # braille pattern blank
    ],
)
def test_text_of_invisible_characters_only_is_empty(deps: DatasetDeps, invisible: str) -> None:
    create(deps)
    content = with_lines(
        {
            2: json.dumps({"text": invisible, "label": "fresh"}).encode() + b"\n",
            6: json.dumps({"text": "a fine text", "label": invisible}).encode() + b"\n",
        }
    )
    result = rejected(deps, content)
    found = {
        f.field: f.line_numbers for f in result.report.findings if f.rule.value == "empty_text"
    }
    assert found == {"text": (2,), "label": (6,)}


def test_invisible_characters_between_visible_ones_are_fine(deps: DatasetDeps) -> None:
    create(deps)
    family = "\U0001f469\u200d\U0001f467"  # one emoji, joined by a zero width joiner
    result = upload(
        deps, with_line(2, json.dumps({"text": family, "label": "fresh"}).encode() + b"\n")
    )
    assert result.version is not None
    assert result.report.findings == ()


def test_a_label_or_a_slice_over_the_length_limit(deps: DatasetDeps) -> None:
    create(deps, label_set=("fresh", "rotten"))
    long = "x" * (DEFAULT_VALUE_BOUNDS.max_label_length + 1)
    content = with_lines(
        {
            3: json.dumps({"text": "a fine text", "label": long}).encode() + b"\n",
            5: json.dumps({"text": "some text", "label": "fresh", "slice": long}).encode() + b"\n",
            7: json.dumps({"text": "more text", "label": "fresh", "tags": [long]}).encode() + b"\n",
        }
    )
    result = rejected(deps, content)
    label = result.finding["label_too_long"]
    assert (label.line_numbers, label.field) == ((3,), "label")
    assert f"{len(long)} characters long, more than {len(long) - 1}" in label.message
    assert "label_not_in_set" not in result.finding  # the label is not quoted anywhere
    slices = {
        f.field: f.line_numbers for f in result.report.findings if f.rule.value == "slice_too_long"
    }
    assert slices == {"slice": (5,), "tags": (7,)}


def test_distinct_labels_and_slices_are_bounded(tmp_path: Path) -> None:
    deps = make_dataset_deps(tmp_path, value_bounds=ValueBounds(max_labels=3, max_slices=2))
    create(deps, min_rows_per_class=1)
    rows = [{**row, "slice": f"movie-{i % 3}"} if i < 6 else row for i, row in enumerate(BASE)]
    rows += [{"text": f"review {i}", "label": f"label-{i}"} for i in range(3)]
    result = rejected(deps, to_jsonl(rows))
    slices = result.finding["too_many_slices"]
    assert (slices.line_numbers, slices.field) == ((3, 6), "slice")  # movie-2's rows
    labels = result.finding["too_many_labels"]
    # fresh, rotten, label-0 fit; label-1 and label-2 do not
    assert labels.line_numbers == (len(BASE) + 2, len(BASE) + 3)
    assert "more than 3 distinct labels" in labels.message
    deps.sessions.kw["bind"].dispose()


def test_the_bounds_come_from_the_settings() -> None:
    settings = DatasetSettings(max_label_length=10, max_labels=5, max_slice_length=7, max_slices=3)
    assert settings.value_bounds() == ValueBounds(
        max_label_length=10, max_labels=5, max_slice_length=7, max_slices=3
    )


def test_normalised_quirks_are_reported_as_info(deps: DatasetDeps) -> None:
    create(deps)
    clean = to_jsonl(BASE)
    first = upload(deps, clean)
    assert first.report.findings == ()
    crlf = {3, 4, 9}
    quirky = b"\xef\xbb\xbf" + b"".join(
        line.replace(b"\n", b"\r\n") if number in crlf else line
        for number, line in enumerate(lines(BASE), start=1)
    ).rstrip(b"\n")
    again = upload(deps, quirky)
    # the same rows: the same version, and the report says what was changed to get there
    assert again.version == first.version
    assert not again.created
    infos = {f.rule.value: f for f in again.report.findings}
    assert {rule: (f.severity, f.line_numbers) for rule, f in infos.items()} == {
        "bom": (Severity.INFO, (1,)),
        "crlf_line_end": (Severity.INFO, (3, 4, 9)),
        "missing_final_newline": (Severity.INFO, (len(BASE),)),
    }
    assert infos["crlf_line_end"].count == 3
    assert again.report.summary.info_count == 5
    assert again.report.summary.outcome is Outcome.ACCEPTED
