"""The dataset tables as of the first migration

Revision ID: b84ddbc27a9b
Revises: (none: the first revision)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "b84ddbc27a9b"
down_revision = None
branch_labels = ("dataset",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset_versions",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("dataset_id", sa.String(length=63), nullable=False),
        sa.Column("version_id", sa.String(length=63), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("byte_count", sa.BigInteger(), nullable=False),
        sa.Column("task_type", sa.String(length=32), nullable=False),
        sa.Column("label_distribution", sa.JSON(), nullable=False),
        sa.Column("slice_distribution", sa.JSON(), nullable=False),
        sa.Column("artifact_uri", sa.String(length=2048), nullable=False),
        sa.Column("report_id", sa.String(length=63), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("parent_version", sa.String(length=255), nullable=False),
        sa.Column("uploader", sa.String(length=255), nullable=False),
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=2048), nullable=False),
        sa.Column("source_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("dataset_id", "version_id"),
    )
    op.create_index(
        op.f("ix_dataset_versions_dataset_id"), "dataset_versions", ["dataset_id"], unique=False
    )
    op.create_table(
        "datasets",
        sa.Column("dataset_id", sa.String(length=63), nullable=False),
        sa.Column("task_type", sa.String(length=32), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=4000), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("latest_version", sa.String(length=255), nullable=False),
        sa.Column("version_count", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lock_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("dataset_id"),
    )
    op.create_table(
        "validation_reports",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("dataset_id", sa.String(length=63), nullable=False),
        sa.Column("report_id", sa.String(length=63), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("dataset_version", sa.String(length=255), nullable=False),
        sa.Column("validate_only", sa.Boolean(), nullable=False),
        sa.Column("lines_read", sa.BigInteger(), nullable=False),
        sa.Column("bytes_read", sa.BigInteger(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("parent_version", sa.String(length=255), nullable=False),
        sa.Column("uploader", sa.String(length=255), nullable=False),
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=2048), nullable=False),
        sa.Column("source_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("dataset_id", "report_id"),
    )
    op.create_index(
        op.f("ix_validation_reports_dataset_id"), "validation_reports", ["dataset_id"], unique=False
    )
    op.create_index(
        "ix_validation_reports_dataset_outcome",
        "validation_reports",
        ["dataset_id", "outcome"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_validation_reports_dataset_outcome", table_name="validation_reports")
    op.drop_index(op.f("ix_validation_reports_dataset_id"), table_name="validation_reports")
    op.drop_table("validation_reports")
    op.drop_table("datasets")
    op.drop_index(op.f("ix_dataset_versions_dataset_id"), table_name="dataset_versions")
    op.drop_table("dataset_versions")
