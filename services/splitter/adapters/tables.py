"""The splitter's own tables (in its own database, next to the outbox and processed events)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class SplitterBase(DeclarativeBase):
    """Declarative base of the splitter's tables."""


class DatasetVersionRecord(SplitterBase):
    """A dataset version the splitter learnt of from a DatasetVersioned event."""

    __tablename__ = "dataset_versions"

    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(255), index=True)
    content_sha256: Mapped[str] = mapped_column(String(64))
    artifact_uri: Mapped[str] = mapped_column(Text)
    task_type: Mapped[str] = mapped_column(String(32))
    row_count: Mapped[int] = mapped_column(BigInteger)
    byte_count: Mapped[int] = mapped_column(BigInteger)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SplitPolicyRecord(SplitterBase):
    """A dataset's split policy, once set (absent means the defaults)."""

    __tablename__ = "split_policies"

    dataset_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    strategy: Mapped[str] = mapped_column(String(32))
    ratio_train: Mapped[float] = mapped_column(Float)
    ratio_validation: Mapped[float] = mapped_column(Float)
    ratio_test: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    auto_split_disabled: Mapped[bool] = mapped_column(Boolean)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SplitPolicyRequestRecord(SplitterBase):
    """A SetSplitPolicy ``request_id`` already applied: its retry changes nothing."""

    __tablename__ = "split_policy_requests"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SplitRecord(SplitterBase):
    """A split whose manifest is in the artifact store. Immutable once written."""

    __tablename__ = "splits"

    #: Insertion order: ListSplits pages newest first by it.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(600), unique=True)
    dataset: Mapped[str] = mapped_column(String(255), index=True)
    dataset_version: Mapped[str] = mapped_column(String(512), index=True)
    dataset_content_sha256: Mapped[str] = mapped_column(String(64))
    dataset_artifact_uri: Mapped[str] = mapped_column(Text)
    task_type: Mapped[str] = mapped_column(String(32))
    strategy: Mapped[str] = mapped_column(String(32))
    ratio_train: Mapped[float] = mapped_column(Float)
    ratio_validation: Mapped[float] = mapped_column(Float)
    ratio_test: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    manifest_uri: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    #: JSON list of {part, rows, groups, labels} for the parts in use.
    part_stats: Mapped[str] = mapped_column(Text)
    overlap_count: Mapped[int] = mapped_column(BigInteger)
    group_count: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
