"""rollback circuit breakers

Revision ID: 7c3e91b4d2a0
Revises: 0592852207eb
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "7c3e91b4d2a0"
down_revision = "0592852207eb"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_rollback_breakers",
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("frozen", sa.Boolean(), nullable=False),
        sa.Column("freeze_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("cause", sa.String(length=300), nullable=False),
        sa.Column("automatic_rollbacks", sa.Integer(), nullable=False),
        sa.Column("counted_since", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("model"),
    )


def downgrade() -> None:
    op.drop_table("registry_rollback_breakers")
