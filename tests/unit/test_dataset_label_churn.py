"""Label churn against the parent version: real reviews, a share of their labels flipped.

Every changed label on a shared row is found (the exact count, the first line numbers), a large
share blocks by default and names its rows, an explicit override with a reason is accepted and
recorded in the lineage, and small or thinly shared churn is only a warning.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.dataset.adapters.protos import lineage_to_proto, policy_to_proto
from services.dataset.domain.churn import ParentLabels
from services.dataset.domain.policy import (
    DEFAULT_MAX_LABEL_CHURN,
    DEFAULT_MIN_SHARED_ROWS_FOR_CHURN,
    SchemaPolicy,
)
from services.dataset.domain.reports import Finding, Outcome, SourceKind, ValidationReport
from services.dataset.domain.rules import Rule, Severity
from services.dataset.domain.validation import StreamingValidator
from services.dataset.handlers.datasets import create_dataset, get_dataset
from services.dataset.handlers.deps import DatasetDeps
from services.dataset.handlers.ingest import IngestRequest, IngestResult, upload_version
from services.dataset.handlers.versions import get_report, get_version
from shared.errors import InvalidArgument
from shared.input_text import normalize_input_text
from shared.task_types import TaskType
from tests.fixtures.datasets import make_dataset_deps, rotten_tomatoes_rows, to_jsonl

FLIP = {"fresh": "rotten", "rotten": "fresh"}


def distinct_reviews(count: int) -> list[dict[str, str]]:
    """Real reviews whose normalized texts differ (the parent has no conflicting labels)."""
    seen: set[str] = set()
    rows = []
    for row in rotten_tomatoes_rows(3 * count):
        key = normalize_input_text(row["text"])
        if key not in seen:
            seen.add(key)
            rows.append(row)
        if len(rows) == count:
            return rows
    raise AssertionError("not enough distinct reviews")


REVIEWS = distinct_reviews(600)
PARENT = REVIEWS[:500]
NEW_ROWS = REVIEWS[500:]


def flipped(
    rows: list[dict[str, str]], share: float, seed: int
) -> tuple[list[dict[str, str]], set[str]]:
    """``rows`` with ``share`` of their labels flipped (seeded); the texts that flipped."""
    chosen = random.Random(seed).sample(range(len(rows)), round(share * len(rows)))
    out = [dict(row) for row in rows]
    for i in chosen:
        out[i]["label"] = FLIP[out[i]["label"]]
    return out, {rows[i]["text"] for i in chosen}


def child(share: float, seed: int = 7) -> tuple[list[dict[str, str]], list[int]]:
    """The parent's rows, ``share`` of them relabelled, with new rows between and the order
    shuffled; and the 1-based lines of the relabelled rows."""
    relabelled, texts = flipped(PARENT, share, seed)
    rows = relabelled + NEW_ROWS
    random.Random(seed + 1).shuffle(rows)
    lines = [n for n, row in enumerate(rows, 1) if row["text"] in texts]
    return rows, lines


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[DatasetDeps]:
    deps = make_dataset_deps(tmp_path, report_line_numbers=20)
    yield deps
    deps.sessions.kw["bind"].dispose()


def create(deps: DatasetDeps, **policy: Any) -> None:
    with deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="reviews",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(**policy),
        )


def upload(
    deps: DatasetDeps,
    rows: list[dict[str, str]],
    dataset: str = "datasets/reviews",
    **request: Any,
) -> IngestResult:
    content = to_jsonl(rows)
    chunks = [content[i : i + 4096] for i in range(0, len(content), 4096)]
    return upload_version(
        deps,
        IngestRequest(dataset=dataset, source_kind=SourceKind.UPLOAD, **request),
        iter(chunks),
    )


def churn_finding(report: ValidationReport) -> Finding:
    (finding,) = [f for f in report.findings if f.rule is Rule.LABEL_CHURN]
    return finding


def test_seventy_percent_flipped_is_rejected_naming_every_row_count_and_lines(
    deps: DatasetDeps,
) -> None:
    create(deps)
    parent = upload(deps, PARENT)
    assert parent.version is not None
    rows, lines = child(0.7)
    assert len(lines) == 350

    with pytest.raises(InvalidArgument) as raised:
        upload(deps, rows)

    (violation,) = [v for v in raised.value.violations if v.field == "label_churn"]
    assert violation.description.startswith(
        f"lines {', '.join(map(str, lines[:10]))} (350 in total): "
    )
    with deps.sessions() as session:
        report = get_report(session, raised.value.metadata["report"])
    assert report.summary.outcome is Outcome.REJECTED
    assert report.summary.error_rules == ("label_churn",)
    finding = churn_finding(report)
    assert finding.severity is Severity.ERROR
    assert finding.count == 350  # every changed label on a shared row, no more
    assert finding.line_numbers == tuple(lines[:20])
    assert f"350 of the 500 rows whose input is in the parent {parent.version.name}" in (
        finding.message
    )
    assert "70.0%, more than the 20% allowed" in finding.message
    first = rows[lines[0] - 1]["label"]
    assert f"line {lines[0]}: {FLIP[first]!r}→{first!r}" in finding.message
    with deps.sessions() as session:
        dataset = get_dataset(session, "datasets/reviews")
    assert (dataset.version_count, dataset.latest_version) == (1, parent.version.name)


def test_the_override_accepts_the_same_churn_and_lineage_records_it(deps: DatasetDeps) -> None:
    create(deps)
    parent = upload(deps, PARENT)
    rows, lines = child(0.7)

    result = upload(
        deps, rows, allow_label_churn=True, label_churn_reason="relabelled by the second review"
    )

    assert result.version is not None
    assert result.created
    finding = churn_finding(result.report)
    assert (finding.severity, finding.count) == (Severity.WARNING, len(lines))
    assert "allowed by the request: relabelled by the second review" in finding.message
    with deps.sessions() as session:
        stored = get_version(session, result.version.name)
    assert stored.lineage.parent_version == parent.version.name  # type: ignore[union-attr]
    assert stored.lineage.label_churn_override == "relabelled by the second review"
    with deps.sessions() as session:
        assert get_report(session, result.report.name).lineage.label_churn_override == (
            "relabelled by the second review"
        )
    assert lineage_to_proto(stored.lineage).label_churn_override == (
        "relabelled by the second review"
    )


def test_an_override_needs_a_reason(deps: DatasetDeps) -> None:
    create(deps)
    upload(deps, PARENT)
    with pytest.raises(InvalidArgument) as raised:
        upload(deps, child(0.7)[0], allow_label_churn=True, label_churn_reason="  ")
    assert [(v.field, v.reason) for v in raised.value.violations] == [
        ("header.label_churn_reason", "REQUIRED")
    ]


def test_routine_corrections_are_a_warning_and_an_explicit_parent_is_compared(
    deps: DatasetDeps,
) -> None:
    create(deps)
    parent = upload(deps, PARENT)
    upload(deps, NEW_ROWS)  # the latest version now shares nothing with the next upload
    rows, lines = child(0.05)

    result = upload(deps, rows, parent_version=parent.version.name)  # type: ignore[union-attr]

    finding = churn_finding(result.report)
    assert (finding.severity, finding.count) == (Severity.WARNING, 25)
    assert finding.line_numbers == tuple(lines[:20])
    assert "5.0%, within the 20% allowed" in finding.message
    assert result.report.lineage.label_churn_override == ""


def test_few_shared_rows_only_warn_and_no_change_no_finding(deps: DatasetDeps) -> None:
    create(deps)
    upload(deps, PARENT[:40])
    relabelled, _ = flipped(PARENT[:40], 1.0, seed=3)
    result = upload(deps, relabelled + NEW_ROWS)
    finding = churn_finding(result.report)
    assert (finding.severity, finding.count) == (Severity.WARNING, 40)
    assert f"fewer than {DEFAULT_MIN_SHARED_ROWS_FOR_CHURN} shared rows" in finding.message

    same = upload(deps, relabelled[:30] + NEW_ROWS[:50])
    assert Rule.LABEL_CHURN not in {f.rule for f in same.report.findings}


def test_the_policy_sets_the_threshold_and_the_severity(deps: DatasetDeps) -> None:
    create(deps, max_label_churn=0.04, min_shared_rows_for_churn=100)
    with deps.sessions() as session:
        dataset = get_dataset(session, "datasets/reviews")
    assert (dataset.policy.max_label_churn, dataset.policy.min_shared_rows_for_churn) == (0.04, 100)
    assert policy_to_proto(dataset.policy).max_label_churn == pytest.approx(0.04)
    upload(deps, PARENT)
    with pytest.raises(InvalidArgument):
        upload(deps, child(0.05)[0])

    with deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="lenient",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(rule_severities={"label_churn": Severity.WARNING}),
        )
    upload(deps, PARENT, "datasets/lenient")
    lenient = upload(deps, child(0.7)[0], "datasets/lenient")
    assert lenient.version is not None
    assert churn_finding(lenient.report).severity is Severity.WARNING
    assert SchemaPolicy().resolved(TaskType.CLASSIFICATION).max_label_churn == (
        DEFAULT_MAX_LABEL_CHURN
    )


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_an_out_of_range_churn_threshold_is_invalid(deps: DatasetDeps, bad: float) -> None:
    with pytest.raises(InvalidArgument) as raised:
        create(deps, max_label_churn=bad)
    assert [v.field for v in raised.value.violations] == ["dataset.schema_policy.max_label_churn"]


def test_inputs_match_after_normalisation_across_blocks_exactly() -> None:
    """Case and spacing do not hide a relabelled row; the parent's first label for an input
    counts; many small blocks find the same rows as one."""
    parent_rows = [*PARENT, {"text": PARENT[0]["text"], "label": FLIP[PARENT[0]["label"]]}]
    parent = ParentLabels.of_rows("datasets/reviews/versions/v-1", parent_rows)
    assert len(parent) == 500
    rows, lines = child(0.3, seed=11)
    for row in rows[::3]:
        row["text"] = "  " + row["text"].upper().replace(" ", "   ") + " "
    content = to_jsonl(rows)
    for block_bytes in (1024, 1 << 20):
        validator = StreamingValidator(
            TaskType.CLASSIFICATION,
            SchemaPolicy().resolved(TaskType.CLASSIFICATION),
            lambda _: None,
            max_line_bytes=1 << 16,
            max_line_numbers=1000,
            block_bytes=block_bytes,
            parent_labels=parent,
        )
        for start in range(0, len(content), 999):
            validator.feed(content[start : start + 999])
        churn = validator.finish().label_churn
        assert churn is not None
        assert (churn.shared_rows, churn.changed_rows) == (500, 150)
        assert [c.line for c in churn.changes] == lines
        assert sum(n for _, _, n in churn.transitions) == 150
        assert all(c.old_label == FLIP[c.new_label] for c in churn.changes)
