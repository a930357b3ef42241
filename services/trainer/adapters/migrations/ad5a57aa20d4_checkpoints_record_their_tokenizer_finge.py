"""checkpoints record their tokenizer fingerprint

Revision ID: ad5a57aa20d4
Revises: fc5dc60b0b95
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ad5a57aa20d4"
down_revision = "fc5dc60b0b95"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # checkpoints recorded before fingerprints have none: "" (the resource leaves it unset)
    op.add_column(
        "trainer_checkpoints",
        sa.Column("tokenizer_fingerprint_json", sa.Text(), server_default="", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("trainer_checkpoints", "tokenizer_fingerprint_json")
