"""The label churn override in lineage

Revision ID: 56addf5289fd
Revises: b84ddbc27a9b
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "56addf5289fd"
down_revision = "b84ddbc27a9b"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # existing versions and reports allowed no churn: an empty override
    for table in ("dataset_versions", "validation_reports"):
        op.add_column(
            table,
            sa.Column(
                "label_churn_override", sa.String(length=1024), nullable=False, server_default=""
            ),
        )


def downgrade() -> None:
    op.drop_column("validation_reports", "label_churn_override")
    op.drop_column("dataset_versions", "label_churn_override")
