"""datasets carry an owner

Revision ID: d3ca13dcd45d
Revises: 56addf5289fd
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "d3ca13dcd45d"
down_revision = "56addf5289fd"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # existing datasets have no owner: an empty document
    op.add_column("datasets", sa.Column("owner", sa.JSON(), server_default="{}", nullable=False))


def downgrade() -> None:
    op.drop_column("datasets", "owner")
