"""Jobs carry a version (compare-and-set of every change) and wait out a full disk

Revision ID: f921c39a506d
Revises: 5f0c2d9e7a41
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "f921c39a506d"
down_revision = "5f0c2d9e7a41"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # existing jobs start at version 1, are blocked by nothing and never ran out of disk
    op.add_column(
        "trainer_jobs", sa.Column("blocked_reason", sa.Text(), server_default="", nullable=False)
    )
    op.add_column(
        "trainer_jobs",
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "trainer_jobs",
        sa.Column("disk_full_count", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "trainer_jobs", sa.Column("version", sa.Integer(), server_default="1", nullable=False)
    )


def downgrade() -> None:
    for column in ("version", "disk_full_count", "blocked_until", "blocked_reason"):
        op.drop_column("trainer_jobs", column)
