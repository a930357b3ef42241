"""trainer keeps dataset audit verdicts

Revision ID: a616958adf56
Revises: ad5a57aa20d4
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a616958adf56"
down_revision = "ad5a57aa20d4"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trainer_dataset_audits",
        sa.Column("dataset_version", sa.String(length=512), nullable=False),
        sa.Column("info_json", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dataset_version"),
    )


def downgrade() -> None:
    op.drop_table("trainer_dataset_audits")
