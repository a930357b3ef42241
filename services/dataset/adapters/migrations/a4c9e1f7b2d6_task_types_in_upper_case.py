"""task types in upper case

Revision ID: a4c9e1f7b2d6
Revises: e7a1c4b9d2f3

The dataset service now stores :class:`shared.task_types.TaskType` values, the proto value
names without their prefix (``CAUSAL_LM``), where it stored lower-case ones (``causal_lm``).
Only these rows change: a version's id is the sha256 of its canonical rows, which hold no task
type, so every version keeps its id and its artifact.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a4c9e1f7b2d6"
down_revision = "e7a1c4b9d2f3"
branch_labels = None
depends_on = None

#: The tables with a ``task_type`` column.
_TABLES = ("datasets", "dataset_versions", "dataset_audits")
#: Every task type the column held before this revision.
_TASK_TYPES = ("classification", "causal_lm")


def _rewrite(to_upper: bool) -> None:
    for name in _TABLES:
        table = sa.table(name, sa.column("task_type", sa.String))
        for lower in _TASK_TYPES:
            old, new = (lower, lower.upper()) if to_upper else (lower.upper(), lower)
            op.execute(table.update().where(table.c.task_type == old).values(task_type=new))


def upgrade() -> None:
    _rewrite(to_upper=True)


def downgrade() -> None:
    _rewrite(to_upper=False)
