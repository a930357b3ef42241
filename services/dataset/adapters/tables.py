"""The dataset service's tables (SQLite by default, PostgreSQL by URL).

Everything the service filters, orders or locks on is a column; the nested parts of a resource
(a policy, label counts, findings) are JSON. ``seq`` columns give versions and reports a total
order of creation, which is what "newest first" listing and its page tokens use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class DatasetBase(DeclarativeBase):
    """Declarative base of the dataset service's own tables."""


class DatasetRow(DatasetBase):
    __tablename__ = "datasets"

    dataset_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    task_type: Mapped[str] = mapped_column(String(32))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(String(4000), default="")
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The dataset's ``Owner`` (team, contact, runbook_uri); ``{}`` when it has none.
    owner: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    latest_version: Mapped[str] = mapped_column(String(255), default="")
    version_count: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: Bumped by every transaction that adds a version: the dataset's write lock.
    lock_version: Mapped[int] = mapped_column(Integer, default=0)


class LineageColumns:
    """Where content came from; shared by versions and reports."""

    parent_version: Mapped[str] = mapped_column(String(255), default="")
    uploader: Mapped[str] = mapped_column(String(255), default="")
    source_kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(2048), default="")
    source_sha256: Mapped[str] = mapped_column(String(64), default="")
    #: Why label churn beyond the policy was allowed; empty when it was not.
    label_churn_override: Mapped[str] = mapped_column(String(1024), default="")


class DatasetVersionRow(LineageColumns, DatasetBase):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version_id"),)

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    dataset_id: Mapped[str] = mapped_column(String(63), index=True)
    version_id: Mapped[str] = mapped_column(String(63))
    content_sha256: Mapped[str] = mapped_column(String(64))
    row_count: Mapped[int] = mapped_column(BigInteger)
    byte_count: Mapped[int] = mapped_column(BigInteger)
    task_type: Mapped[str] = mapped_column(String(32))
    #: ``[[label, count], …]`` sorted by label.
    label_distribution: Mapped[list[Any]] = mapped_column(JSON)
    slice_distribution: Mapped[list[Any]] = mapped_column(JSON)
    artifact_uri: Mapped[str] = mapped_column(String(2048))
    report_id: Mapped[str] = mapped_column(String(63))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ValidationReportRow(LineageColumns, DatasetBase):
    __tablename__ = "validation_reports"
    __table_args__ = (
        UniqueConstraint("dataset_id", "report_id"),
        Index("ix_validation_reports_dataset_outcome", "dataset_id", "outcome"),
    )

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    dataset_id: Mapped[str] = mapped_column(String(63), index=True)
    report_id: Mapped[str] = mapped_column(String(63))
    outcome: Mapped[str] = mapped_column(String(16))
    dataset_version: Mapped[str] = mapped_column(String(255), default="")
    validate_only: Mapped[bool] = mapped_column(Boolean, default=False)
    lines_read: Mapped[int] = mapped_column(BigInteger)
    bytes_read: Mapped[int] = mapped_column(BigInteger)
    #: ``[{rule, severity, message, count, line_numbers, field}, …]`` in report order.
    findings: Mapped[list[Any]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DatasetAuditRow(DatasetBase):
    """A version's label audit: added PENDING with the version, completed by the audit runner."""

    __tablename__ = "dataset_audits"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version_id"),
        Index("ix_dataset_audits_verdict", "verdict"),
    )

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    dataset_id: Mapped[str] = mapped_column(String(63))
    version_id: Mapped[str] = mapped_column(String(63))
    content_sha256: Mapped[str] = mapped_column(String(64))
    task_type: Mapped[str] = mapped_column(String(32))
    row_count: Mapped[int] = mapped_column(BigInteger)
    #: ``pending`` until the audit finishes, then its verdict.
    verdict: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(4096), default="")
    action: Mapped[str] = mapped_column(String(16))
    max_noise_rate: Mapped[float] = mapped_column(Float)
    encoder: Mapped[str] = mapped_column(String(255), default="")
    #: :class:`~services.dataset.domain.label_audit.LabelAuditFindings` as JSON; ``{}`` when none.
    findings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    complete_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: :class:`~services.dataset.domain.parent_shift.ParentShift` as JSON; ``{}`` when none.
    parent_shift: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
