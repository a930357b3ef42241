"""SetEvaluationPolicy request ids already applied

Revision ID: d3b11ba4acbb
Revises: d936a47c4e6e
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "d3b11ba4acbb"
down_revision = "d936a47c4e6e"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluator_policy_requests",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("policy", sa.String(length=200), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )


def downgrade() -> None:
    op.drop_table("evaluator_policy_requests")
