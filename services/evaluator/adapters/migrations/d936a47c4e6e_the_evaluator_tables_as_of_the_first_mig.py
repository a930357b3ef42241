"""The evaluator tables as of the first migration

Revision ID: d936a47c4e6e
Revises: (none: the first revision)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "d936a47c4e6e"
down_revision = None
branch_labels = ("evaluator",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluator_checkpoints",
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("target_model", sa.String(length=80), nullable=False),
        sa.Column("is_best", sa.Boolean(), nullable=False),
        sa.Column("is_final", sa.Boolean(), nullable=False),
        sa.Column("event", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "evaluator_dataset_version_locations",
        sa.Column("dataset_version", sa.String(length=300), nullable=False),
        sa.Column("artifact_uri", sa.String(length=2000), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("dataset_version"),
    )
    op.create_table(
        "evaluator_evaluations",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("checkpoint", sa.String(length=300), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("verdict", sa.String(length=24), nullable=False),
        sa.Column("sets_key", sa.String(length=2000), nullable=False),
        sa.Column("dedupe_key", sa.String(length=400), nullable=True),
        sa.Column("requested_baseline", sa.String(length=300), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resource", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("dedupe_key"),
        sa.UniqueConstraint("name"),
    )
    op.create_index(
        op.f("ix_evaluator_evaluations_checkpoint"),
        "evaluator_evaluations",
        ["checkpoint"],
        unique=False,
    )
    op.create_index(
        op.f("ix_evaluator_evaluations_model"), "evaluator_evaluations", ["model"], unique=False
    )
    op.create_index(
        "ix_evaluator_evaluations_sha256_model",
        "evaluator_evaluations",
        ["checkpoint_sha256", "model"],
        unique=False,
    )
    op.create_index(
        "ix_evaluator_evaluations_state_seq",
        "evaluator_evaluations",
        ["state", "seq"],
        unique=False,
    )
    op.create_table(
        "evaluator_policies",
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("checkpoint_selection", sa.String(length=24), nullable=False),
        sa.Column("max_generation_examples", sa.Integer(), nullable=False),
        sa.Column("max_new_tokens", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model"),
    )
    op.create_table(
        "evaluator_scored_outcomes",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subject_key", sa.String(length=100), nullable=False),
        sa.Column("set_key", sa.String(length=800), nullable=False),
        sa.Column("scoring_fingerprint", sa.String(length=32), nullable=False),
        sa.Column("task_type", sa.String(length=24), nullable=False),
        sa.Column("artifact_uri", sa.String(length=2000), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("example_count", sa.Integer(), nullable=False),
        sa.Column("computed_by", sa.String(length=80), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint(
            "subject_key", "set_key", "scoring_fingerprint", name="uq_evaluator_scored_outcomes"
        ),
    )
    op.create_table(
        "evaluator_split_locations",
        sa.Column("split", sa.String(length=400), nullable=False),
        sa.Column("dataset_version", sa.String(length=300), nullable=False),
        sa.Column("manifest_uri", sa.String(length=2000), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("dataset_artifact_uri", sa.String(length=2000), nullable=False),
        sa.Column("dataset_content_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("split"),
    )


def downgrade() -> None:
    op.drop_table("evaluator_split_locations")
    op.drop_table("evaluator_scored_outcomes")
    op.drop_table("evaluator_policies")
    op.drop_index("ix_evaluator_evaluations_state_seq", table_name="evaluator_evaluations")
    op.drop_index("ix_evaluator_evaluations_sha256_model", table_name="evaluator_evaluations")
    op.drop_index(op.f("ix_evaluator_evaluations_model"), table_name="evaluator_evaluations")
    op.drop_index(op.f("ix_evaluator_evaluations_checkpoint"), table_name="evaluator_evaluations")
    op.drop_table("evaluator_evaluations")
    op.drop_table("evaluator_dataset_version_locations")
    op.drop_table("evaluator_checkpoints")
