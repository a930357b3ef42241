"""Jobs record their creator (four-eyes approval in the registry)

Revision ID: b3d7e2a91c55
Revises: f921c39a506d
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "b3d7e2a91c55"
down_revision = "f921c39a506d"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # jobs created before it have no recorded creator: four-eyes cannot hold anyone to them
    op.add_column(
        "trainer_jobs",
        sa.Column("creator", sa.String(256), server_default="", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("trainer_jobs", "creator")
