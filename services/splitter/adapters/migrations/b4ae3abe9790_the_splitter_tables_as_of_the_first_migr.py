"""The splitter tables as of the first migration

Revision ID: b4ae3abe9790
Revises: (none: the first revision)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "b4ae3abe9790"
down_revision = None
branch_labels = ("splitter",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset_versions",
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("dataset", sa.String(length=255), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("task_type", sa.String(length=32), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("byte_count", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index(
        op.f("ix_dataset_versions_dataset"), "dataset_versions", ["dataset"], unique=False
    )
    op.create_table(
        "split_policies",
        sa.Column("dataset_id", sa.String(length=64), nullable=False),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("ratio_train", sa.Float(), nullable=False),
        sa.Column("ratio_validation", sa.Float(), nullable=False),
        sa.Column("ratio_test", sa.Float(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("auto_split_disabled", sa.Boolean(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dataset_id"),
    )
    op.create_table(
        "splits",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=600), nullable=False),
        sa.Column("dataset", sa.String(length=255), nullable=False),
        sa.Column("dataset_version", sa.String(length=512), nullable=False),
        sa.Column("dataset_content_sha256", sa.String(length=64), nullable=False),
        sa.Column("dataset_artifact_uri", sa.Text(), nullable=False),
        sa.Column("task_type", sa.String(length=32), nullable=False),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("ratio_train", sa.Float(), nullable=False),
        sa.Column("ratio_validation", sa.Float(), nullable=False),
        sa.Column("ratio_test", sa.Float(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("manifest_uri", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("part_stats", sa.Text(), nullable=False),
        sa.Column("overlap_count", sa.BigInteger(), nullable=False),
        sa.Column("group_count", sa.BigInteger(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("name"),
    )
    op.create_index(op.f("ix_splits_dataset"), "splits", ["dataset"], unique=False)
    op.create_index(op.f("ix_splits_dataset_version"), "splits", ["dataset_version"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_splits_dataset_version"), table_name="splits")
    op.drop_index(op.f("ix_splits_dataset"), table_name="splits")
    op.drop_table("splits")
    op.drop_table("split_policies")
    op.drop_index(op.f("ix_dataset_versions_dataset"), table_name="dataset_versions")
    op.drop_table("dataset_versions")
