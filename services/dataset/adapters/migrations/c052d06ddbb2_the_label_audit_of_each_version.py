"""the label audit of each version

Revision ID: c052d06ddbb2
Revises: d3ca13dcd45d
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c052d06ddbb2"
down_revision = "d3ca13dcd45d"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset_audits",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("dataset_id", sa.String(length=63), nullable=False),
        sa.Column("version_id", sa.String(length=63), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("task_type", sa.String(length=32), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=4096), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("max_noise_rate", sa.Float(), nullable=False),
        sa.Column("encoder", sa.String(length=255), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("complete_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("dataset_id", "version_id"),
    )
    op.create_index("ix_dataset_audits_verdict", "dataset_audits", ["verdict"], unique=False)
    # versions accepted before the audit existed are audited after the upgrade (the runner
    # picks PENDING ones up), so the trainer's policies, which wait for DatasetAudited, do not
    # wait for them forever; the default policy applies (0.25 = label_audit.DEFAULT_MAX_NOISE_RATE)
    versions = sa.table(
        "dataset_versions",
        sa.column("dataset_id", sa.String),
        sa.column("version_id", sa.String),
        sa.column("content_sha256", sa.String),
        sa.column("task_type", sa.String),
        sa.column("row_count", sa.BigInteger),
        sa.column("create_time", sa.DateTime(timezone=True)),
    )
    audits = sa.table(
        "dataset_audits",
        *(sa.column(c.name, c.type) for c in versions.columns),
        sa.column("verdict", sa.String),
        sa.column("reason", sa.String),
        sa.column("action", sa.String),
        sa.column("max_noise_rate", sa.Float),
        sa.column("encoder", sa.String),
        sa.column("findings", sa.JSON),
    )
    pending = [
        {
            **row._asdict(),
            "verdict": "pending",
            "reason": "",
            "action": "block",
            "max_noise_rate": 0.25,
            "encoder": "",
            "findings": {},
        }
        for row in op.get_bind().execute(sa.select(versions))
    ]
    if pending:
        op.bulk_insert(audits, pending)


def downgrade() -> None:
    op.drop_index("ix_dataset_audits_verdict", table_name="dataset_audits")
    op.drop_table("dataset_audits")
