"""The registry tables as of the first migration

Revision ID: 0592852207eb
Revises: (none: the first revision)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0592852207eb"
down_revision = None
branch_labels = ("registry",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_alias_moves",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("from_checkpoint", sa.String(length=300), nullable=False),
        sa.Column("to_checkpoint", sa.String(length=300), nullable=False),
        sa.Column("trigger", sa.String(length=24), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("cause", sa.String(length=300), nullable=False),
        sa.Column("trigger_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("move_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("model", "alias", "revision", name="uq_registry_alias_revision"),
    )
    op.create_index(
        op.f("ix_registry_alias_moves_model"), "registry_alias_moves", ["model"], unique=False
    )
    op.create_table(
        "registry_aliases",
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("checkpoint", sa.String(length=300), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "alias"),
    )
    op.create_table(
        "registry_checkpoints",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("source_checkpoint", sa.String(length=300), nullable=False),
        sa.Column("training_job", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("record", sa.LargeBinary(), nullable=False),
        sa.Column("verdict", sa.String(length=24), nullable=False),
        sa.Column("latest_evaluation_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("review_state", sa.String(length=16), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("review_reason", sa.Text(), nullable=False),
        sa.Column("review_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ever_production", sa.Boolean(), nullable=False),
        sa.Column("rolled_back", sa.Boolean(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("model", "source_checkpoint", name="uq_registry_checkpoint_source"),
        sa.UniqueConstraint("name"),
    )
    op.create_index(
        "ix_registry_checkpoints_model_seq", "registry_checkpoints", ["model", "seq"], unique=False
    )
    op.create_index(
        op.f("ix_registry_checkpoints_sha256"), "registry_checkpoints", ["sha256"], unique=False
    )
    op.create_table(
        "registry_deferred_events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("source_checkpoint", sa.String(length=300), nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index(
        "ix_registry_deferred_lookup",
        "registry_deferred_events",
        ["model", "status", "source_checkpoint"],
        unique=False,
    )
    op.create_table(
        "registry_evaluations",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("checkpoint", sa.String(length=300), nullable=False),
        sa.Column("evaluation", sa.String(length=200), nullable=False),
        sa.Column("verdict", sa.String(length=24), nullable=False),
        sa.Column("complete_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record", sa.LargeBinary(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("decision_reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("checkpoint", "evaluation", name="uq_registry_evaluation"),
    )
    op.create_index(
        op.f("ix_registry_evaluations_checkpoint"),
        "registry_evaluations",
        ["checkpoint"],
        unique=False,
    )
    op.create_table(
        "registry_live_counts",
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("checkpoint", sa.String(length=300), nullable=False),
        sa.Column("metric", sa.String(length=120), nullable=False),
        sa.Column("slice", sa.String(length=200), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("trials", sa.Integer(), nullable=False),
        sa.Column("lower_bound", sa.Float(), nullable=False),
        sa.Column("upper_bound", sa.Float(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "checkpoint", "metric", "slice"),
    )
    op.create_table(
        "registry_live_quality",
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("checkpoint", sa.String(length=300), nullable=False),
        sa.Column("metric", sa.String(length=120), nullable=False),
        sa.Column("slice", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("example_count", sa.Integer(), nullable=False),
        sa.Column("window_seconds", sa.Float(), nullable=True),
        sa.Column("floor", sa.Float(), nullable=True),
        sa.Column("below_floor", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("report_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "checkpoint", "metric", "slice"),
    )
    op.create_table(
        "registry_models",
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("task_type", sa.Integer(), nullable=False),
        sa.Column("promotion_policy", sa.String(length=16), nullable=False),
        sa.Column("definition", sa.LargeBinary(), nullable=False),
        sa.Column("lock_version", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "registry_regressions",
        sa.Column("evaluation", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("source_checkpoint", sa.String(length=300), nullable=False),
        sa.Column("metric", sa.String(length=120), nullable=False),
        sa.Column("slice", sa.String(length=200), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("p_value", sa.Float(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("evaluation"),
    )
    op.create_index(
        op.f("ix_registry_regressions_model"), "registry_regressions", ["model"], unique=False
    )
    op.create_table(
        "registry_trigger_keys",
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("move_seq", sa.Integer(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "key"),
    )


def downgrade() -> None:
    op.drop_table("registry_trigger_keys")
    op.drop_index(op.f("ix_registry_regressions_model"), table_name="registry_regressions")
    op.drop_table("registry_regressions")
    op.drop_table("registry_models")
    op.drop_table("registry_live_quality")
    op.drop_table("registry_live_counts")
    op.drop_index(op.f("ix_registry_evaluations_checkpoint"), table_name="registry_evaluations")
    op.drop_table("registry_evaluations")
    op.drop_index("ix_registry_deferred_lookup", table_name="registry_deferred_events")
    op.drop_table("registry_deferred_events")
    op.drop_index(op.f("ix_registry_checkpoints_sha256"), table_name="registry_checkpoints")
    op.drop_index("ix_registry_checkpoints_model_seq", table_name="registry_checkpoints")
    op.drop_table("registry_checkpoints")
    op.drop_table("registry_aliases")
    op.drop_index(op.f("ix_registry_alias_moves_model"), table_name="registry_alias_moves")
    op.drop_table("registry_alias_moves")
