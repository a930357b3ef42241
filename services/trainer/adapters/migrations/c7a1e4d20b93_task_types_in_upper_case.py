"""task types in upper case

Revision ID: c7a1e4d20b93
Revises: b3d7e2a91c55

The trainer now stores :class:`shared.task_types.TaskType` values, the proto value names
without their prefix (``CAUSAL_LM``), where it stored lower-case ones (``causal_lm``): the
jobs' ``task_type`` column and the ``task_type`` of the splits it remembers (``info_json``,
written compactly by the repository's ``dumps``). Adapter metadata already written to
artifacts keeps its lower-case value; reading accepts either case.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c7a1e4d20b93"
down_revision = "b3d7e2a91c55"
branch_labels = None
depends_on = None

#: Every task type the trainer stored before this revision.
_TASK_TYPES = ("classification", "causal_lm")


def _rewrite(to_upper: bool) -> None:
    jobs = sa.table("trainer_jobs", sa.column("task_type", sa.String))
    splits = sa.table("trainer_known_splits", sa.column("info_json", sa.Text))
    for lower in _TASK_TYPES:
        old, new = (lower, lower.upper()) if to_upper else (lower.upper(), lower)
        op.execute(jobs.update().where(jobs.c.task_type == old).values(task_type=new))
        old_json, new_json = f'"task_type":"{old}"', f'"task_type":"{new}"'
        op.execute(
            splits.update()
            .where(splits.c.info_json.contains(old_json, autoescape=True))
            .values(info_json=sa.func.replace(splits.c.info_json, old_json, new_json))
        )


def upgrade() -> None:
    _rewrite(to_upper=True)


def downgrade() -> None:
    _rewrite(to_upper=False)
