"""SetSplitPolicy request ids already applied

Revision ID: c67da1aa3173
Revises: b4ae3abe9790
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c67da1aa3173"
down_revision = "b4ae3abe9790"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "split_policy_requests",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("dataset_id", sa.String(length=64), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )


def downgrade() -> None:
    op.drop_table("split_policy_requests")
