"""SetTrainingPolicy request ids already applied

Revision ID: 5f0c2d9e7a41
Revises: a616958adf56
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "5f0c2d9e7a41"
down_revision = "a616958adf56"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trainer_policy_requests",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("policy", sa.String(length=128), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )


def downgrade() -> None:
    op.drop_table("trainer_policy_requests")
