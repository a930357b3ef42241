"""The label audit on real reviews with injected label flips.

Flips are found (the suspected rows are mostly the flipped ones, by line number), a noisy
version is BLOCKED by the default policy and the verdict names the rule and rows, a clean one
passes, WARN/REPORT policies do not block, causal-LM versions are SKIPPED at once, and every
finished audit is announced by a ``DatasetAudited`` in the outbox. The audit's model work runs
here in-process (:class:`InProcessAuditor`) except in the one test of the worker process.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from services.dataset.adapters.audit_engine import (
    AuditJob,
    ShiftJob,
    audit_rows,
    measure_parent_shift,
)
from services.dataset.adapters.label_auditor import AuditorSettings, ProcessLabelAuditor
from services.dataset.domain.label_audit import (
    DEFAULT_MAX_NOISE_RATE,
    LabelAuditAction,
    LabelAuditFindings,
    LabelAuditPolicy,
    LabelAuditVerdict,
    NotAuditable,
    audit_labels,
    word_features,
)
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.reports import SourceKind
from services.dataset.handlers.audits import get_audit, run_pending_audits
from services.dataset.handlers.datasets import create_dataset
from services.dataset.handlers.deps import DatasetDeps
from services.dataset.handlers.ingest import IngestRequest, upload_version
from shared.events import OutboxEvent
from shared.modeling.models import default_models_root
from shared.modeling.packaged import ENCODER, prepare_packaged_models
from shared.stats.two_sample import TwoSampleResult
from shared.task_types import TaskType
from tests.fixtures.datasets import make_dataset_deps, rotten_tomatoes_rows, to_jsonl
from tuneline.dataset.v1 import events_pb2, resources_pb2

FLIP = {"fresh": "rotten", "rotten": "fresh"}


def distinct_reviews(count: int, seed: int = 0) -> list[dict[str, str]]:
    rows = list({row["text"]: row for row in rotten_tomatoes_rows(3 * count)}.values())
    random.Random(seed).shuffle(rows)
    return rows[:count]


def with_flips(rows: list[dict[str, str]], share: float, seed: int = 1) -> tuple[list, set[int]]:
    """``rows`` with a seeded ``share`` of labels flipped; the 1-based lines flipped."""
    chosen = set(random.Random(seed).sample(range(len(rows)), round(share * len(rows))))
    out = [
        {**row, "label": FLIP[row["label"]]} if i in chosen else dict(row)
        for i, row in enumerate(rows)
    ]
    return out, {i + 1 for i in chosen}


@pytest.fixture(scope="module")
def models_root() -> Path:
    root = default_models_root()
    prepare_packaged_models(root, names=(ENCODER,))
    return root


class InProcessAuditor:
    """The worker's function, called in the test process (no spawn)."""

    encoder = ENCODER

    def __init__(self, models_root: Path) -> None:
        self.models_root = models_root

    def audit(self, texts: Sequence[str], labels: Sequence[str]) -> LabelAuditFindings:
        return audit_rows(AuditJob(tuple(texts), tuple(labels), ENCODER, str(self.models_root)))

    def parent_shift(
        self,
        version_texts: Sequence[str],
        parent_texts: Sequence[str],
        *,
        permutations: int,
        max_rows: int,
    ) -> TwoSampleResult:
        job = ShiftJob(
            tuple(version_texts),
            tuple(parent_texts),
            ENCODER,
            str(self.models_root),
            permutations=permutations,
            max_rows=max_rows,
        )
        return measure_parent_shift(job)


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[DatasetDeps]:
    deps = make_dataset_deps(tmp_path)
    yield deps
    deps.sessions.kw["bind"].dispose()


def upload(deps: DatasetDeps, dataset: str, rows: list[dict[str, str]]):
    return upload_version(
        deps,
        IngestRequest(dataset=f"datasets/{dataset}", source_kind=SourceKind.UPLOAD),
        iter([to_jsonl(rows)]),
    )


def audited_events(deps: DatasetDeps) -> list[events_pb2.DatasetAudited]:
    topic = events_pb2.DatasetAudited.DESCRIPTOR.full_name
    with deps.sessions() as session:
        rows = session.scalars(select(OutboxEvent).where(OutboxEvent.topic == topic)).all()
        return [events_pb2.DatasetAudited.FromString(row.payload) for row in rows]


def test_flipped_reviews_are_found_and_the_version_is_blocked_naming_its_rows(
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
    rows, flipped = with_flips(distinct_reviews(1000), 0.3)
    version = upload(deps, "reviews", rows).version
    assert version is not None
    name = f"{version.name}/audit"
    with deps.sessions() as session:
        assert get_audit(session, name).verdict is LabelAuditVerdict.PENDING
    assert audited_events(deps) == []

    assert run_pending_audits(deps, InProcessAuditor(models_root)) == 1
    with deps.sessions() as session:
        audit = get_audit(session, name)
    assert audit.verdict is LabelAuditVerdict.BLOCKED
    findings = audit.findings
    assert findings is not None
    assert findings.noise_rate > DEFAULT_MAX_NOISE_RATE
    suspected = {row.line_number for row in findings.suspected_rows}
    found = suspected & flipped
    assert len(found) >= 0.5 * len(flipped)  # recall
    assert len(found) >= 0.45 * len(suspected)  # precision, against a 30 % base rate
    for row in findings.suspected_rows:
        if row.line_number in flipped:  # the given label is the flip; the model suggests back
            assert row.given_label == rows[row.line_number - 1]["label"]
            assert row.suggested_label == FLIP[row.given_label]
    assert {c.label for c in findings.classes} == {"fresh", "rotten"}
    assert "label_audit" in audit.reason
    assert "lines " in audit.reason
    first = findings.suspected_rows[0].line_number
    assert f"lines {first}," in audit.reason

    (event,) = audited_events(deps)
    assert event.dataset_version == version.name
    assert event.verdict == resources_pb2.LABEL_AUDIT_VERDICT_BLOCKED
    assert list(event.suspected_line_numbers[:3]) == [
        r.line_number for r in findings.suspected_rows[:3]
    ]
    assert event.audit == name
    assert run_pending_audits(deps, InProcessAuditor(models_root)) == 0
    assert deps.metrics.audits.labels("blocked")._value.get() == 1


def test_clean_reviews_pass_and_a_warn_policy_never_blocks(
    deps: DatasetDeps, models_root: Path
) -> None:
    with deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="clean",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(),
        )
    clean = upload(deps, "clean", distinct_reviews(600, seed=3)).version
    with deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="warned",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(
                label_audit_action=LabelAuditAction.WARN, max_label_noise_rate=0.05
            ),
        )
    warned = upload(deps, "warned", distinct_reviews(600, seed=4)).version
    assert clean is not None
    assert warned is not None
    assert run_pending_audits(deps, InProcessAuditor(models_root), limit=5) == 2
    with deps.sessions() as session:
        assert get_audit(session, f"{clean.name}/audit").verdict is LabelAuditVerdict.PASSED
    with deps.sessions() as session:
        audit = get_audit(session, f"{warned.name}/audit")
    assert audit.verdict is LabelAuditVerdict.WARNED
    assert audit.policy == LabelAuditPolicy(LabelAuditAction.WARN, 0.05)


def test_a_causal_lm_version_is_skipped_and_announced_at_once(deps: DatasetDeps) -> None:
    with deps.sessions.begin() as session:
        create_dataset(
            session, deps, dataset_id="chat", task_type=TaskType.CAUSAL_LM, policy=SchemaPolicy()
        )
    rows = [{"prompt": f"Question {i}?", "completion": f" Answer {i}."} for i in range(20)]
    version = upload(deps, "chat", rows).version
    assert version is not None
    with deps.sessions() as session:
        audit = get_audit(session, f"{version.name}/audit")
    assert audit.verdict is LabelAuditVerdict.SKIPPED
    assert "no labels" in audit.reason
    (event,) = audited_events(deps)
    assert event.verdict == resources_pb2.LABEL_AUDIT_VERDICT_SKIPPED


def test_policies_decide_on_the_estimated_noise_rate() -> None:
    assert LabelAuditPolicy().max_noise_rate == DEFAULT_MAX_NOISE_RATE
    assert LabelAuditPolicy().verdict(0.3) is LabelAuditVerdict.BLOCKED
    assert LabelAuditPolicy().verdict(0.2) is LabelAuditVerdict.PASSED
    assert LabelAuditPolicy(LabelAuditAction.WARN).verdict(0.9) is LabelAuditVerdict.WARNED
    assert LabelAuditPolicy(LabelAuditAction.REPORT).verdict(0.9) is LabelAuditVerdict.PASSED
    assert LabelAuditVerdict.BLOCKED.blocks_training
    assert not LabelAuditVerdict.WARNED.blocks_training


def test_a_label_with_one_row_is_left_out_and_one_label_is_not_auditable() -> None:
    rows = distinct_reviews(200, seed=5)
    texts = [row["text"] for row in rows] + ["a lonely text"]
    labels = [row["label"] for row in rows] + ["meh"]
    findings = audit_labels([word_features(texts)], labels)
    assert findings.row_count == 200
    assert findings.extra == {"unaudited_labels": ["meh"]}
    assert all(row.line_number <= 200 for row in findings.suspected_rows)
    with pytest.raises(NotAuditable):
        audit_labels([word_features(texts[:50])], ["fresh"] * 50)


def test_the_audit_runs_in_a_spawned_worker_process(models_root: Path) -> None:
    rows, flipped = with_flips(distinct_reviews(300, seed=6), 0.3)
    auditor = ProcessLabelAuditor(AuditorSettings(encoder=ENCODER, models_root=models_root))
    try:
        findings = auditor.audit([r["text"] for r in rows], [r["label"] for r in rows])
    finally:
        auditor.stop()
    assert findings.row_count == 300
    assert {row.line_number for row in findings.suspected_rows} & flipped
