"""training policies carry an owner and a budget

Revision ID: fc5dc60b0b95
Revises: 62459895594c
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "fc5dc60b0b95"
down_revision = "62459895594c"
branch_labels = None
depends_on = None

_COLUMNS = ("owner_json", "budget_json", "model_budget_json")


def upgrade() -> None:
    # existing policies have no owner and no budget, and their model's budget is unknown (as
    # none existed): empty documents
    for column in _COLUMNS:
        op.add_column(
            "trainer_policies",
            sa.Column(column, sa.Text(), server_default="{}", nullable=False),
        )


def downgrade() -> None:
    for column in reversed(_COLUMNS):
        op.drop_column("trainer_policies", column)
