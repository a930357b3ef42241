"""The trainer tables as of the first migration

Revision ID: 62459895594c
Revises: (none: the first revision)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "62459895594c"
down_revision = None
branch_labels = ("trainer",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trainer_checkpoints",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("job", sa.String(length=128), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Float(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=False),
        sa.Column("validation_loss", sa.Float(), nullable=True),
        sa.Column("tokens_seen", sa.Integer(), nullable=False),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("state_uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("is_best", sa.Boolean(), nullable=False),
        sa.Column("is_final", sa.Boolean(), nullable=False),
        sa.Column("cost_json", sa.Text(), nullable=False),
        sa.Column("artifact_deleted", sa.Boolean(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("job", "step", name="uq_trainer_checkpoints_job_step"),
    )
    op.create_index(
        op.f("ix_trainer_checkpoints_job"), "trainer_checkpoints", ["job"], unique=False
    )
    op.create_table(
        "trainer_jobs",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("target_model", sa.String(length=128), nullable=False),
        sa.Column("split", sa.String(length=512), nullable=False),
        sa.Column("training_policy", sa.String(length=128), nullable=False),
        sa.Column("task_type", sa.String(length=32), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("failure_reason", sa.String(length=32), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=False),
        sa.Column("stop_reason", sa.String(length=32), nullable=True),
        sa.Column("progress_json", sa.Text(), nullable=False),
        sa.Column("best_checkpoint", sa.String(length=256), nullable=False),
        sa.Column("latest_checkpoint", sa.String(length=256), nullable=False),
        sa.Column("latest_state_uri", sa.Text(), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("device_type", sa.String(length=128), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("crash_count", sa.Integer(), nullable=False),
        sa.Column("oom_retries", sa.Integer(), nullable=False),
        sa.Column("micro_batch_size", sa.Integer(), nullable=False),
        sa.Column("accumulation_steps", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("cancel_reason", sa.Text(), nullable=False),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("device_seconds_done", sa.Float(), nullable=False),
        sa.Column("tokens_processed_done", sa.Integer(), nullable=False),
        sa.Column("attempt_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempt_tokens_start", sa.Integer(), nullable=False),
        sa.Column("training_seconds_done", sa.Float(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index(
        "ix_trainer_jobs_listing", "trainer_jobs", ["create_time", "name"], unique=False
    )
    op.create_index(op.f("ix_trainer_jobs_split"), "trainer_jobs", ["split"], unique=False)
    op.create_index("ix_trainer_jobs_state", "trainer_jobs", ["state", "create_time"], unique=False)
    op.create_index(
        op.f("ix_trainer_jobs_target_model"), "trainer_jobs", ["target_model"], unique=False
    )
    op.create_table(
        "trainer_known_splits",
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("dataset", sa.String(length=256), nullable=False),
        sa.Column("info_json", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index(
        op.f("ix_trainer_known_splits_dataset"), "trainer_known_splits", ["dataset"], unique=False
    )
    op.create_table(
        "trainer_loss_points",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job", sa.String(length=128), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Float(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=True),
        sa.Column("validation_loss", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job", "step", name="uq_trainer_loss_points_job_step"),
    )
    op.create_index(
        op.f("ix_trainer_loss_points_job"), "trainer_loss_points", ["job"], unique=False
    )
    op.create_table(
        "trainer_policies",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("dataset", sa.String(length=256), nullable=False),
        sa.Column("target_model", sa.String(length=128), nullable=False),
        sa.Column("template_json", sa.Text(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index(
        op.f("ix_trainer_policies_dataset"), "trainer_policies", ["dataset"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_trainer_policies_dataset"), table_name="trainer_policies")
    op.drop_table("trainer_policies")
    op.drop_index(op.f("ix_trainer_loss_points_job"), table_name="trainer_loss_points")
    op.drop_table("trainer_loss_points")
    op.drop_index(op.f("ix_trainer_known_splits_dataset"), table_name="trainer_known_splits")
    op.drop_table("trainer_known_splits")
    op.drop_index(op.f("ix_trainer_jobs_target_model"), table_name="trainer_jobs")
    op.drop_index("ix_trainer_jobs_state", table_name="trainer_jobs")
    op.drop_index(op.f("ix_trainer_jobs_split"), table_name="trainer_jobs")
    op.drop_index("ix_trainer_jobs_listing", table_name="trainer_jobs")
    op.drop_table("trainer_jobs")
    op.drop_index(op.f("ix_trainer_checkpoints_job"), table_name="trainer_checkpoints")
    op.drop_table("trainer_checkpoints")
