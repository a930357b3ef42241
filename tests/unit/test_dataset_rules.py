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

from services.dataset import handlers
from services.dataset.domain import (
    Finding,
    Outcome,
    SchemaPolicy,
    Severity,
    SourceKind,
    TaskType,
    ValidationReport,
)
from services.dataset.handlers import DatasetDeps, IngestRequest, IngestResult
from shared.errors import InvalidArgument
from shared.events import OutboxEvent
from shared.grpc.errors import to_rpc_status
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
    handlers.create_dataset(
        deps,
        dataset_id="reviews",
        task_type=task,
        policy=SchemaPolicy(rule_severities=severities, **policy),
    )
    return "datasets/reviews"


def upload(deps: DatasetDeps, content: bytes, *, chunk: int = 1000, **request: Any) -> IngestResult:
    chunks = [content[i : i + chunk] for i in range(0, len(content), chunk)]
    return handlers.upload_version(
        deps,
        IngestRequest(dataset="datasets/reviews", source_kind=SourceKind.UPLOAD, **request),
        iter(chunks),
    )


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
    report = handlers.get_report(deps, info.metadata["report"])
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
    dataset = handlers.get_dataset(deps, "datasets/reviews")
    assert (dataset.version_count, dataset.latest_version) == (0, "")
    assert (
        handlers.list_versions(deps, parent="datasets/reviews", page_size=0, page_token="")[0] == []
    )
    reports, _ = handlers.list_reports(
        deps, parent="datasets/reviews", page_size=0, page_token="", outcome=None
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
