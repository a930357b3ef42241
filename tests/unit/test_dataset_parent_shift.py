"""The audit's shift test between a version and its parent, on real texts and the real encoder.

A version whose texts come from another source than its parent's (the corpus's plot
descriptions after its review snippets) is FLAGGED with a large effect; a version that
resamples its parent's source (part of the parent's rows and new reviews) is not. The shift
is report only: it never changes the audit's verdict. It is stored with the audit, announced in
``DatasetAudited`` and exported as a metric.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from services.dataset.domain.label_audit import LabelAuditFindings, LabelAuditVerdict, NotAuditable
from services.dataset.domain.parent_shift import ParentShiftPolicy, ParentShiftStatus
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.reports import SourceKind
from services.dataset.handlers.audits import get_audit, run_pending_audits
from services.dataset.handlers.datasets import create_dataset
from services.dataset.handlers.deps import DatasetDeps
from services.dataset.handlers.ingest import IngestRequest, upload_version
from shared.modeling.models import default_models_root
from shared.modeling.packaged import ENCODER, prepare_packaged_models
from shared.task_types import TaskType
from tests.fixtures.datasets import make_dataset_deps, plot_description_rows, to_jsonl
from tests.unit.test_dataset_label_audit import InProcessAuditor, audited_events, distinct_reviews
from tuneline.dataset.v1 import resources_pb2

#: Rows per version; the shift test embeds all of them (max_rows below is larger).
ROWS = 200


class ShiftOnlyAuditor(InProcessAuditor):
    """The real shift test; the label audit is SKIPPED (test_dataset_label_audit covers it,
    and embedding every version twice more would only slow this file down)."""

    def audit(self, texts: Sequence[str], labels: Sequence[str]) -> LabelAuditFindings:
        raise NotAuditable("not under test here")


@pytest.fixture(scope="module")
def models_root() -> Path:
    root = default_models_root()
    prepare_packaged_models(root, names=(ENCODER,))  # a no-op once prepared
    return root


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[DatasetDeps]:
    deps = replace(make_dataset_deps(tmp_path), parent_shift=ParentShiftPolicy(max_rows=ROWS + 100))
    yield deps
    deps.sessions.kw["bind"].dispose()


def upload(deps: DatasetDeps, rows: list[dict[str, str]], parent: str = "") -> str:
    return upload_to(deps, "reviews", rows, parent=parent)


def upload_to(
    deps: DatasetDeps, dataset: str, rows: list[dict[str, str]], *, parent: str = ""
) -> str:
    outcome = upload_version(
        deps,
        IngestRequest(
            dataset=f"datasets/{dataset}", source_kind=SourceKind.UPLOAD, parent_version=parent
        ),
        iter([to_jsonl(rows)]),
    )
    assert outcome.version is not None, outcome.report.findings
    return outcome.version.name


def test_a_new_source_is_flagged_against_the_parent_and_a_resample_is_not(
    deps: DatasetDeps, models_root: Path
) -> None:
    with deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="reviews",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(),
        )
    pool = distinct_reviews(2 * ROWS, seed=11)
    parent_rows = pool[:ROWS]
    parent = upload(deps, parent_rows)
    resample = upload(
        deps, random.Random(12).sample(parent_rows, ROWS // 2) + pool[ROWS : ROWS + ROWS // 2]
    )
    plots = upload(deps, plot_description_rows(ROWS), parent=parent)
    assert run_pending_audits(deps, ShiftOnlyAuditor(models_root), limit=5) == 3

    with deps.sessions() as session:
        assert get_audit(session, f"{parent}/audit").parent_shift is None  # no parent

    with deps.sessions() as session:
        same = get_audit(session, f"{resample}/audit").parent_shift
    assert same is not None
    assert same.parent_version == parent
    assert same.status is ParentShiftStatus.PASSED, same.reason
    assert abs(same.effect_size) < 0.1
    # only the rows the version adds are compared: the kept half is the parent's own
    assert (same.parent_rows, same.version_rows) == (ROWS, ROWS // 2)

    with deps.sessions() as session:
        audit = get_audit(session, f"{plots}/audit")
    shifted = audit.parent_shift
    assert shifted is not None
    assert shifted.parent_version == parent
    assert shifted.status is ParentShiftStatus.FLAGGED, shifted.reason
    assert shifted.effect_size > 0.3  # a large effect, not a significant trifle
    assert shifted.p_value <= 0.01
    assert "report only" in shifted.reason
    assert audit.verdict is LabelAuditVerdict.SKIPPED  # report only: the verdict is the audit's

    events = {event.dataset_version: event for event in audited_events(deps)}
    assert not events[parent].HasField("parent_shift")
    flagged = events[plots].parent_shift
    assert flagged.status == resources_pb2.PARENT_SHIFT_STATUS_FLAGGED
    assert flagged.parent_version == parent
    assert flagged.effect_size == pytest.approx(shifted.effect_size)
    assert events[resample].parent_shift.status == resources_pb2.PARENT_SHIFT_STATUS_PASSED
    gauge = deps.metrics.parent_shift_effect.labels("datasets/reviews")
    assert gauge._value.get() == pytest.approx(shifted.effect_size)  # the latest audited


def test_a_turned_off_shift_test_is_skipped_with_its_reason(
    deps: DatasetDeps, models_root: Path
) -> None:
    deps = replace(deps, parent_shift=ParentShiftPolicy(enabled=False))
    with deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="reviews",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(),
        )
    pool = distinct_reviews(120, seed=13)
    parent = upload(deps, pool[:60])
    child = upload(deps, pool[60:])
    assert run_pending_audits(deps, ShiftOnlyAuditor(models_root), limit=5) == 2
    with deps.sessions() as session:
        shift = get_audit(session, f"{child}/audit").parent_shift
    assert shift is not None
    assert shift.parent_version == parent
    assert shift.status is ParentShiftStatus.SKIPPED
    assert "turned off" in shift.reason


def test_a_causal_lm_version_is_measured_against_its_parent_and_its_labels_are_skipped(
    deps: DatasetDeps, models_root: Path
) -> None:
    """Causal-LM rows have no labels to audit, but what they teach can shift: their prompt and
    completion are compared with the parent's. Without a parent nothing waits on the encoder."""
    with deps.sessions.begin() as session:
        create_dataset(
            session, deps, dataset_id="writer", task_type=TaskType.CAUSAL_LM, policy=SchemaPolicy()
        )

    def lessons(texts: list[str], prompt: str) -> list[dict[str, str]]:
        return [{"prompt": prompt, "completion": f" {text}"} for text in texts]

    reviews = [row["text"] for row in distinct_reviews(ROWS, seed=17)]
    plots = [row["text"] for row in plot_description_rows(ROWS)]
    parent = upload_to(deps, "writer", lessons(reviews, "Write a film review."))
    # announced at once: no parent, so no shift to measure and no labels to audit
    with deps.sessions() as session:
        parent_audit = get_audit(session, f"{parent}/audit")
    assert parent_audit.verdict is LabelAuditVerdict.SKIPPED
    assert parent_audit.parent_shift is None
    assert [event.dataset_version for event in audited_events(deps)] == [parent]

    child = upload_to(deps, "writer", lessons(plots, "Write a film review."), parent=parent)
    with deps.sessions() as session:
        assert get_audit(session, f"{child}/audit").verdict is LabelAuditVerdict.PENDING
    assert run_pending_audits(deps, ShiftOnlyAuditor(models_root), limit=5) == 1

    with deps.sessions() as session:
        audit = get_audit(session, f"{child}/audit")
    assert audit.verdict is LabelAuditVerdict.SKIPPED
    assert "no labels" in audit.reason
    shifted = audit.parent_shift
    assert shifted is not None
    assert shifted.status is ParentShiftStatus.FLAGGED, shifted.reason
    assert shifted.effect_size > 0.3
    assert (shifted.parent_rows, shifted.version_rows) == (ROWS, ROWS)
    events = {event.dataset_version: event for event in audited_events(deps)}
    assert events[child].parent_shift.status == resources_pb2.PARENT_SHIFT_STATUS_FLAGGED
