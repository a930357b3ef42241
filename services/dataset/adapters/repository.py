"""The dataset service's SQL repository: every query the handlers need, on one session.

It speaks domain objects (``services.dataset.domain``) and keeps rows to itself.

Serialising writers per dataset: a transaction that adds a version starts with
:meth:`DatasetRepository.lock_dataset`, an ``UPDATE`` of the dataset's row. On PostgreSQL that
takes the row lock until commit; on SQLite it takes the database's write lock (Python's sqlite3
opens the transaction at the first write). Everything read afterwards — does this version
exist already, what is the latest version, has a concurrent first upload just derived the label
set — is therefore current until the commit.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.dataset.adapters.tables import (
    DatasetAuditRow,
    DatasetRow,
    DatasetVersionRow,
    ValidationReportRow,
)
from services.dataset.domain.datasets import Dataset, DatasetVersion
from services.dataset.domain.label_audit import (
    DEFAULT_ACTION,
    DEFAULT_MAX_NOISE_RATE,
    DatasetAudit,
    LabelAuditAction,
    LabelAuditFindings,
    LabelAuditPolicy,
    LabelAuditVerdict,
)
from services.dataset.domain.parent_shift import ParentShift
from services.dataset.domain.policy import (
    DEFAULT_MAX_LABEL_CHURN,
    DEFAULT_MIN_SHARED_ROWS_FOR_CHURN,
    SchemaPolicy,
)
from services.dataset.domain.reports import (
    Finding,
    Lineage,
    Outcome,
    SourceKind,
    Summary,
    ValidationReport,
)
from services.dataset.domain.rules import Rule, Severity
from shared.ownership import Owner
from shared.task_types import TaskType


def _utc(value: datetime) -> datetime:
    """SQLite forgets the offset of stored times; every time here is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class DatasetRepository:
    """Queries and writes of the dataset tables inside the caller's transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- datasets ---------------------------------------------------------------------------

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        row = self.session.get(DatasetRow, dataset_id)
        return _dataset(row) if row else None

    def lock_dataset(self, dataset_id: str) -> Dataset | None:
        """Take the dataset's write lock for this transaction; ``None`` if it does not exist."""
        result = self.session.execute(
            update(DatasetRow)
            .where(DatasetRow.dataset_id == dataset_id)
            .values(lock_version=DatasetRow.lock_version + 1)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            return None
        row = self.session.get(DatasetRow, dataset_id, populate_existing=True)
        return _dataset(row) if row else None

    def add_dataset(self, dataset: Dataset) -> None:
        assert dataset.create_time is not None
        assert dataset.update_time is not None
        self.session.add(
            DatasetRow(
                dataset_id=dataset.dataset_id,
                task_type=dataset.task_type.value,
                display_name=dataset.display_name,
                description=dataset.description,
                policy=_policy_json(dataset.policy),
                owner=asdict(dataset.owner),
                latest_version="",
                version_count=0,
                create_time=dataset.create_time,
                update_time=dataset.update_time,
                lock_version=0,
            )
        )
        self.session.flush()

    def record_new_version(
        self, dataset_id: str, version: str, policy: SchemaPolicy, when: datetime
    ) -> None:
        """The dataset's latest version, count, and (when derived just now) label set."""
        row = self.session.get(DatasetRow, dataset_id)
        assert row is not None
        row.latest_version = version
        row.version_count += 1
        row.policy = _policy_json(policy)
        row.update_time = when

    def list_datasets(
        self, *, task_type: TaskType | None, after_id: str | None, limit: int
    ) -> list[Dataset]:
        query = select(DatasetRow).order_by(DatasetRow.dataset_id).limit(limit)
        if task_type is not None:
            query = query.where(DatasetRow.task_type == task_type.value)
        if after_id is not None:
            query = query.where(DatasetRow.dataset_id > after_id)
        return [_dataset(row) for row in self.session.scalars(query)]

    # -- versions ---------------------------------------------------------------------------

    def get_version(self, dataset_id: str, version_id: str) -> DatasetVersion | None:
        row = self.session.scalar(
            select(DatasetVersionRow).where(
                DatasetVersionRow.dataset_id == dataset_id,
                DatasetVersionRow.version_id == version_id,
            )
        )
        return _version(row) if row else None

    def add_version(self, version: DatasetVersion) -> None:
        self.session.add(
            DatasetVersionRow(
                dataset_id=version.dataset_id,
                version_id=version.version_id,
                content_sha256=version.content_sha256,
                row_count=version.row_count,
                byte_count=version.byte_count,
                task_type=version.task_type.value,
                label_distribution=[list(item) for item in version.label_distribution],
                slice_distribution=[list(item) for item in version.slice_distribution],
                artifact_uri=version.artifact_uri,
                report_id=version.report.rsplit("/", 1)[-1],
                summary=_summary_json(version.summary),
                create_time=version.create_time,
                **_lineage_columns(version.lineage),
            )
        )
        self.session.flush()

    def list_versions(
        self, dataset_id: str, *, before_seq: int | None, limit: int
    ) -> list[tuple[int, DatasetVersion]]:
        """``(seq, version)`` pairs, newest first."""
        query = (
            select(DatasetVersionRow)
            .where(DatasetVersionRow.dataset_id == dataset_id)
            .order_by(DatasetVersionRow.seq.desc())
            .limit(limit)
        )
        if before_seq is not None:
            query = query.where(DatasetVersionRow.seq < before_seq)
        return [(row.seq, _version(row)) for row in self.session.scalars(query)]

    # -- reports ----------------------------------------------------------------------------

    def add_report(self, report: ValidationReport) -> None:
        self.session.add(
            ValidationReportRow(
                dataset_id=report.dataset_id,
                report_id=report.report_id,
                outcome=report.summary.outcome.value,
                dataset_version=report.dataset_version,
                validate_only=report.validate_only,
                lines_read=report.lines_read,
                bytes_read=report.bytes_read,
                findings=[_finding_json(f) for f in report.findings],
                create_time=report.create_time,
                **_lineage_columns(report.lineage),
            )
        )
        self.session.flush()

    def get_report(self, dataset_id: str, report_id: str) -> ValidationReport | None:
        row = self.session.scalar(
            select(ValidationReportRow).where(
                ValidationReportRow.dataset_id == dataset_id,
                ValidationReportRow.report_id == report_id,
            )
        )
        return _report(row) if row else None

    def list_reports(
        self, dataset_id: str, *, outcome: Outcome | None, before_seq: int | None, limit: int
    ) -> list[tuple[int, ValidationReport]]:
        """``(seq, report)`` pairs, newest first."""
        query = (
            select(ValidationReportRow)
            .where(ValidationReportRow.dataset_id == dataset_id)
            .order_by(ValidationReportRow.seq.desc())
            .limit(limit)
        )
        if outcome is not None:
            query = query.where(ValidationReportRow.outcome == outcome.value)
        if before_seq is not None:
            query = query.where(ValidationReportRow.seq < before_seq)
        return [(row.seq, _report(row)) for row in self.session.scalars(query)]

    # -- label audits -----------------------------------------------------------------------

    def add_audit(self, audit: DatasetAudit) -> None:
        self.session.add(
            DatasetAuditRow(
                dataset_id=audit.dataset_id,
                version_id=audit.version_id,
                content_sha256=audit.content_sha256,
                task_type=audit.task_type.value,
                row_count=audit.row_count,
                verdict=audit.verdict.value,
                reason=audit.reason,
                action=audit.policy.action.value,
                max_noise_rate=audit.policy.max_noise_rate,
                encoder=audit.encoder,
                findings=audit.findings.to_json() if audit.findings else {},
                create_time=audit.create_time,
                complete_time=audit.complete_time,
                parent_shift=audit.parent_shift.to_json() if audit.parent_shift else {},
            )
        )
        self.session.flush()

    def get_audit(self, dataset_id: str, version_id: str) -> DatasetAudit | None:
        row = self._audit_row(dataset_id, version_id)
        return _audit(row) if row else None

    def pending_audits(self, limit: int) -> list[DatasetAudit]:
        """PENDING audits, oldest first."""
        query = (
            select(DatasetAuditRow)
            .where(DatasetAuditRow.verdict == LabelAuditVerdict.PENDING.value)
            .order_by(DatasetAuditRow.seq)
            .limit(limit)
        )
        return [_audit(row) for row in self.session.scalars(query)]

    def complete_audit(self, audit: DatasetAudit) -> bool:
        """Store a finished audit over its PENDING row; ``False`` if it was no longer pending
        (another replica finished it first)."""
        row = self._audit_row(audit.dataset_id, audit.version_id)
        if row is None or row.verdict != LabelAuditVerdict.PENDING.value:
            return False
        row.verdict = audit.verdict.value
        row.reason = audit.reason[:4096]
        row.encoder = audit.encoder
        row.findings = audit.findings.to_json() if audit.findings else {}
        row.complete_time = audit.complete_time
        row.parent_shift = audit.parent_shift.to_json() if audit.parent_shift else {}
        self.session.flush()
        return True

    def _audit_row(self, dataset_id: str, version_id: str) -> DatasetAuditRow | None:
        return self.session.scalar(
            select(DatasetAuditRow).where(
                DatasetAuditRow.dataset_id == dataset_id,
                DatasetAuditRow.version_id == version_id,
            )
        )


# -- rows <-> domain ---------------------------------------------------------------------------


def _policy_json(policy: SchemaPolicy) -> dict[str, Any]:
    return {
        "label_set": list(policy.label_set),
        "label_set_derived": policy.label_set_derived,
        "max_text_length": policy.max_text_length,
        "min_rows_per_class": policy.min_rows_per_class,
        "max_imbalance_ratio": policy.max_imbalance_ratio,
        "max_label_churn": policy.max_label_churn,
        "min_shared_rows_for_churn": policy.min_shared_rows_for_churn,
        "label_audit_action": policy.label_audit_action.value if policy.label_audit_action else "",
        "max_label_noise_rate": policy.max_label_noise_rate,
        "rule_severities": {rule: s.value for rule, s in policy.rule_severities.items()},
    }


def _policy(data: dict[str, Any]) -> SchemaPolicy:
    return SchemaPolicy(
        label_set=tuple(data["label_set"]),
        label_set_derived=data["label_set_derived"],
        max_text_length=data["max_text_length"],
        min_rows_per_class=data["min_rows_per_class"],
        max_imbalance_ratio=data["max_imbalance_ratio"],
        # policies stored before label churn existed: the defaults
        max_label_churn=data.get("max_label_churn", DEFAULT_MAX_LABEL_CHURN),
        min_shared_rows_for_churn=data.get(
            "min_shared_rows_for_churn", DEFAULT_MIN_SHARED_ROWS_FOR_CHURN
        ),
        # policies stored before the label audit existed: the defaults
        label_audit_action=LabelAuditAction(data.get("label_audit_action") or DEFAULT_ACTION),
        max_label_noise_rate=data.get("max_label_noise_rate") or DEFAULT_MAX_NOISE_RATE,
        rule_severities={rule: Severity(s) for rule, s in data["rule_severities"].items()},
    )


def _dataset(row: DatasetRow) -> Dataset:
    return Dataset(
        dataset_id=row.dataset_id,
        task_type=TaskType(row.task_type),
        policy=_policy(row.policy),
        display_name=row.display_name,
        description=row.description,
        latest_version=row.latest_version,
        version_count=row.version_count,
        create_time=_utc(row.create_time),
        update_time=_utc(row.update_time),
        owner=Owner(**(row.owner or {})),
    )


def _lineage_columns(lineage: Lineage) -> dict[str, str]:
    return {
        "parent_version": lineage.parent_version,
        "uploader": lineage.uploader,
        "source_kind": lineage.source_kind.value,
        "source": lineage.source,
        "source_sha256": lineage.source_sha256,
        "label_churn_override": lineage.label_churn_override,
    }


def _lineage(row: DatasetVersionRow | ValidationReportRow) -> Lineage:
    return Lineage(
        parent_version=row.parent_version,
        uploader=row.uploader,
        source_kind=SourceKind(row.source_kind),
        source=row.source,
        source_sha256=row.source_sha256,
        label_churn_override=row.label_churn_override,
    )


def _summary_json(summary: Summary) -> dict[str, Any]:
    return {
        "outcome": summary.outcome.value,
        "error_count": summary.error_count,
        "warning_count": summary.warning_count,
        "info_count": summary.info_count,
        "error_rules": list(summary.error_rules),
        "warning_rules": list(summary.warning_rules),
    }


def _summary(data: dict[str, Any]) -> Summary:
    return Summary(
        outcome=Outcome(data["outcome"]),
        error_count=data["error_count"],
        warning_count=data["warning_count"],
        info_count=data["info_count"],
        error_rules=tuple(data["error_rules"]),
        warning_rules=tuple(data["warning_rules"]),
    )


def _version(row: DatasetVersionRow) -> DatasetVersion:
    return DatasetVersion(
        dataset_id=row.dataset_id,
        version_id=row.version_id,
        content_sha256=row.content_sha256,
        row_count=row.row_count,
        byte_count=row.byte_count,
        task_type=TaskType(row.task_type),
        label_distribution=tuple((label, n) for label, n in row.label_distribution),
        slice_distribution=tuple((label, n) for label, n in row.slice_distribution),
        artifact_uri=row.artifact_uri,
        report=f"datasets/{row.dataset_id}/reports/{row.report_id}",
        summary=_summary(row.summary),
        lineage=_lineage(row),
        create_time=_utc(row.create_time),
    )


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "rule": finding.rule.value,
        "severity": finding.severity.value,
        "message": finding.message,
        "count": finding.count,
        "line_numbers": list(finding.line_numbers),
        "field": finding.field,
    }


def _report(row: ValidationReportRow) -> ValidationReport:
    return ValidationReport(
        dataset_id=row.dataset_id,
        report_id=row.report_id,
        findings=tuple(
            Finding(
                rule=Rule(f["rule"]),
                severity=Severity(f["severity"]),
                message=f["message"],
                count=f["count"],
                line_numbers=tuple(f["line_numbers"]),
                field=f["field"],
            )
            for f in row.findings
        ),
        lines_read=row.lines_read,
        bytes_read=row.bytes_read,
        lineage=_lineage(row),
        validate_only=row.validate_only,
        create_time=_utc(row.create_time),
        dataset_version=row.dataset_version,
    )


def _audit(row: DatasetAuditRow) -> DatasetAudit:
    return DatasetAudit(
        dataset_id=row.dataset_id,
        version_id=row.version_id,
        content_sha256=row.content_sha256,
        task_type=TaskType(row.task_type),
        policy=LabelAuditPolicy(LabelAuditAction(row.action), row.max_noise_rate),
        row_count=row.row_count,
        create_time=_utc(row.create_time),
        verdict=LabelAuditVerdict(row.verdict),
        reason=row.reason,
        encoder=row.encoder,
        findings=LabelAuditFindings.from_json(row.findings) if row.findings else None,
        complete_time=_utc(row.complete_time) if row.complete_time else None,
        parent_shift=ParentShift.from_json(row.parent_shift) if row.parent_shift else None,
    )
