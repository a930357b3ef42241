"""the parent shift of each audit

Revision ID: e7a1c4b9d2f3
Revises: c052d06ddbb2
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "e7a1c4b9d2f3"
down_revision = "c052d06ddbb2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # audits finished before the shift test existed have none: an empty document
    op.add_column(
        "dataset_audits", sa.Column("parent_shift", sa.JSON(), server_default="{}", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("dataset_audits", "parent_shift")
