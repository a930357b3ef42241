"""The label audit of each version: requesting it when a version commits, running the pending
ones (the audit runner), and GetDatasetAudit."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy.orm import Session

from services.dataset.adapters.label_auditor import AuditFailed
from services.dataset.adapters.protos import dataset_audited
from services.dataset.adapters.repository import DatasetRepository
from services.dataset.domain.datasets import DatasetVersion
from services.dataset.domain.label_audit import (
    DatasetAudit,
    LabelAuditFindings,
    LabelAuditVerdict,
    NotAuditable,
)
from services.dataset.domain.parent_shift import MIN_ROWS as MIN_PARENT_SHIFT_ROWS
from services.dataset.domain.parent_shift import ParentShift, judge_parent_shift, skipped_shift
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.handlers.deps import DatasetDeps, LabelAuditor
from shared import names
from shared.canonical_jsonl import CanonicalJsonlReader
from shared.errors import FieldViolation, InvalidArgument, NotFound
from shared.events import stage_event
from shared.input_text import normalize_input_text, row_text
from shared.task_types import TaskType


def request_audit(
    deps: DatasetDeps, session: Session, version: DatasetVersion, policy: SchemaPolicy
) -> None:
    """The new version's label audit: PENDING (the audit runner picks it up), or SKIPPED and
    announced at once for a CAUSAL_LM version with nothing to embed: its rows have no labels,
    and without a parent (or with the shift test off) there is no shift to measure either."""
    audit = DatasetAudit(
        dataset_id=version.dataset_id,
        version_id=version.version_id,
        content_sha256=version.content_sha256,
        task_type=version.task_type,
        policy=policy.label_audit_policy(),
        row_count=version.row_count,
        create_time=version.create_time or deps.clock(),
    )
    if version.task_type is not TaskType.CLASSIFICATION and not _measures_parent_shift(
        deps, version
    ):
        audit = audit.finished(
            LabelAuditVerdict.SKIPPED,
            f"label_audit: {version.task_type.value} rows have no labels to audit",
            audit.create_time,
        )
        stage_event(
            session, dataset_audited(audit), source=deps.event_source, subject=audit.dataset_version
        )
        deps.metrics.audited(audit)
    DatasetRepository(session).add_audit(audit)


def get_audit(session: Session, name: str) -> DatasetAudit:
    """GetDatasetAudit: ``name`` is ``datasets/{dataset}/versions/{version}/audit``."""
    version_name_part, _, suffix = name.rpartition("/")
    if suffix != "audit":
        raise InvalidArgument(
            "invalid audit name",
            [
                FieldViolation(
                    "name", "must be datasets/{dataset}/versions/{version}/audit", "INVALID_FORMAT"
                )
            ],
        )
    dataset_id, version_id = names.DATASET_VERSION.ids(version_name_part, field="name")
    audit = DatasetRepository(session).get_audit(dataset_id, version_id)
    if audit is None:
        raise NotFound("dataset audit", name)
    return audit


def run_pending_audits(deps: DatasetDeps, auditor: LabelAuditor, *, limit: int = 1) -> int:
    """Audit up to ``limit`` PENDING versions, oldest first: store each verdict and stage its
    ``DatasetAudited`` in one transaction. Returns how many were finished."""
    with deps.sessions() as session:
        pending = DatasetRepository(session).pending_audits(limit)
    finished = 0
    for audit in pending:
        done = _audited(deps, auditor, audit)
        with deps.sessions.begin() as session:
            if not DatasetRepository(session).complete_audit(done):
                continue  # another replica finished it first
            stage_event(
                session,
                dataset_audited(done),
                source=deps.event_source,
                subject=done.dataset_version,
            )
        deps.relay_wake()
        deps.metrics.audited(done)
        finished += 1
    return finished


def _audited(deps: DatasetDeps, auditor: LabelAuditor, audit: DatasetAudit) -> DatasetAudit:
    started = time.perf_counter()
    with deps.sessions() as session:
        version = DatasetRepository(session).get_version(audit.dataset_id, audit.version_id)
    if version is None:  # there is no delete RPC; be exact anyway
        return audit.finished(LabelAuditVerdict.FAILED, "the version is gone", deps.clock())
    if version.task_type is not TaskType.CLASSIFICATION:
        # no labels to audit; the texts still shift against the parent's (report only)
        texts = _version_texts(deps, version)
        shift = _parent_shift(deps, auditor, version, texts)
        deps.metrics.audit_duration.observe(time.perf_counter() - started)
        return audit.finished(
            LabelAuditVerdict.SKIPPED,
            f"label_audit: {version.task_type.value} rows have no labels to audit",
            deps.clock(),
            encoder=auditor.encoder if shift is not None else "",
            parent_shift=shift,
        )
    texts = []
    labels: list[str] = []
    with deps.store.open(version.artifact_uri) as handle:
        for row in CanonicalJsonlReader(handle):
            texts.append(str(row["text"]))
            labels.append(str(row["label"]))
    findings: LabelAuditFindings | None = None
    unaudited: tuple[LabelAuditVerdict, str] | None = None
    try:
        findings = auditor.audit(texts, labels)
    except NotAuditable as reason:
        unaudited = LabelAuditVerdict.SKIPPED, f"label_audit: {reason}"
    except AuditFailed as reason:
        unaudited = LabelAuditVerdict.FAILED, f"label_audit: {reason}"
    finally:
        deps.metrics.audit_duration.observe(time.perf_counter() - started)
    shift = _parent_shift(deps, auditor, version, texts)
    if findings is None:
        assert unaudited is not None
        return audit.finished(*unaudited, deps.clock(), encoder=auditor.encoder, parent_shift=shift)
    return audit.audited(findings, deps.clock(), encoder=auditor.encoder, parent_shift=shift)


def _measures_parent_shift(deps: DatasetDeps, version: DatasetVersion) -> bool:
    return bool(version.lineage.parent_version) and deps.parent_shift.enabled


def _version_texts(deps: DatasetDeps, version: DatasetVersion) -> list[str]:
    """Every row's text as written (:func:`shared.input_text.row_text`), in file order."""
    with deps.store.open(version.artifact_uri) as handle:
        texts = (row_text(row) for row in CanonicalJsonlReader(handle))
        return [text for text in texts if text is not None]


def _parent_shift(
    deps: DatasetDeps, auditor: LabelAuditor, version: DatasetVersion, texts: Sequence[str]
) -> ParentShift | None:
    """The shift of the texts ``version`` adds to its parent against the parent's; None
    without a parent (see :mod:`services.dataset.domain.parent_shift` for why only the added
    ones)."""
    parent_name = version.lineage.parent_version
    policy = deps.parent_shift
    if not parent_name:
        return None
    if not policy.enabled:
        return skipped_shift(parent_name, policy, "turned off")
    with deps.sessions() as session:
        parent = DatasetRepository(session).get_version(*names.DATASET_VERSION.ids(parent_name))
    if parent is None:  # there is no delete RPC; be exact anyway
        return skipped_shift(parent_name, policy, "the parent version is gone")
    parent_texts = _version_texts(deps, parent)
    inherited = {normalize_input_text(text) for text in parent_texts}
    added = [text for text in texts if normalize_input_text(text) not in inherited]
    if len(added) < MIN_PARENT_SHIFT_ROWS or len(parent_texts) < MIN_PARENT_SHIFT_ROWS:
        return skipped_shift(
            parent_name,
            policy,
            f"{len(added)} rows added to {len(parent_texts)} of the parent; the test needs "
            f"{MIN_PARENT_SHIFT_ROWS} of each",
        )
    try:
        test = auditor.parent_shift(
            added, parent_texts, permutations=policy.permutations, max_rows=policy.max_rows
        )
    except AuditFailed as reason:
        return skipped_shift(parent_name, policy, f"no embeddings: {reason}")
    return judge_parent_shift(parent_name, test, policy)
