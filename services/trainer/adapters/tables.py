"""The trainer's own tables (created next to the event plumbing in its database)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class TrainerBase(DeclarativeBase):
    """Declarative base of the trainer's tables."""


class JobRow(TrainerBase):
    """A training job. Its configuration, split and software versions are one JSON document
    (``spec_json``, immutable after creation); state, progress and accounting are columns."""

    __tablename__ = "trainer_jobs"
    __table_args__ = (
        Index("ix_trainer_jobs_listing", "create_time", "name"),
        Index("ix_trainer_jobs_state", "state", "create_time"),
    )

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    target_model: Mapped[str] = mapped_column(String(128), index=True)
    split: Mapped[str] = mapped_column(String(512), index=True)
    training_policy: Mapped[str] = mapped_column(String(128), default="")
    task_type: Mapped[str] = mapped_column(String(32))
    spec_json: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    failure_message: Mapped[str] = mapped_column(Text, default="")
    stop_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    progress_json: Mapped[str] = mapped_column(Text, default="{}")
    best_checkpoint: Mapped[str] = mapped_column(String(256), default="")
    latest_checkpoint: Mapped[str] = mapped_column(String(256), default="")
    latest_state_uri: Mapped[str] = mapped_column(Text, default="")
    device: Mapped[str] = mapped_column(String(64), default="")
    device_type: Mapped[str] = mapped_column(String(128), default="")
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    crash_count: Mapped[int] = mapped_column(Integer, default=0)
    oom_retries: Mapped[int] = mapped_column(Integer, default=0)
    micro_batch_size: Mapped[int] = mapped_column(Integer, default=0)
    accumulation_steps: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_reason: Mapped[str] = mapped_column(Text, default="")
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: Device time and tokens of finished attempts; the running attempt adds its own.
    device_seconds_done: Mapped[float] = mapped_column(Float, default=0.0)
    tokens_processed_done: Mapped[int] = mapped_column(Integer, default=0)
    attempt_started_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    attempt_tokens_start: Mapped[int] = mapped_column(Integer, default=0)
    training_seconds_done: Mapped[float] = mapped_column(Float, default=0.0)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Why a RUNNING job is not training now (e.g. a full disk) and when it is tried again.
    blocked_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    blocked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Attempts that ended on a full disk in a row: the wait before the next one doubles.
    disk_full_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Compare-and-set of every change: each UPDATE matches the version it read and bumps it
    #: (``version_id_col``), so of two transactions changing one job at once (a cancel and the
    #: start of an attempt) the later fails with StaleDataError and is retried on fresh state
    #: (``shared.db.run_in_transaction``) instead of overwriting the other.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: Who created the job (TrainingJob.creator): the verified caller of CreateTrainingJob, or
    #: the policy's name for a job a training policy made; "" without auth.
    creator: Mapped[str] = mapped_column(String(256), default="", server_default="")

    __mapper_args__ = {"version_id_col": version}


class CheckpointRow(TrainerBase):
    """A checkpoint; (job, step) is unique, so no step is ever announced twice."""

    __tablename__ = "trainer_checkpoints"
    __table_args__ = (UniqueConstraint("job", "step", name="uq_trainer_checkpoints_job_step"),)

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    job: Mapped[str] = mapped_column(String(128), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float)
    train_loss: Mapped[float] = mapped_column(Float)
    validation_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens_seen: Mapped[int] = mapped_column(Integer)
    artifact_uri: Mapped[str] = mapped_column(Text)
    state_uri: Mapped[str] = mapped_column(Text, default="")
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    is_final: Mapped[bool] = mapped_column(Boolean, default=False)
    cost_json: Mapped[str] = mapped_column(Text)
    artifact_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The tokenizer it was trained with, as JSON ("": not recorded, older checkpoints).
    tokenizer_fingerprint_json: Mapped[str] = mapped_column(Text, default="", server_default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LossPointRow(TrainerBase):
    """One point of a job's loss curve; a resumed run rewrites the points it redoes."""

    __tablename__ = "trainer_loss_points"
    __table_args__ = (UniqueConstraint("job", "step", name="uq_trainer_loss_points_job_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(128), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    validation_loss: Mapped[float | None] = mapped_column(Float, nullable=True)


class PolicyRow(TrainerBase):
    """A training policy; its job template is a JSON document."""

    __tablename__ = "trainer_policies"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(256), index=True)
    target_model: Mapped[str] = mapped_column(String(128))
    template_json: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The policy's ``Owner`` and ``Budget`` as JSON documents ("{}": none).
    owner_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    budget_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    #: The target model's ``Budget`` as the registry said when the policy was set (a model's
    #: budget is fixed when it is created), so jobs made on SplitCreated never wait on the
    #: registry.
    model_budget_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PolicyRequestRow(TrainerBase):
    """A SetTrainingPolicy ``request_id`` already applied: its retry changes nothing."""

    __tablename__ = "trainer_policy_requests"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    policy: Mapped[str] = mapped_column(String(128))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class KnownSplitRow(TrainerBase):
    """A split the trainer learnt about (from SplitCreated, or from the splitter)."""

    __tablename__ = "trainer_known_splits"

    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(256), index=True)
    info_json: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DatasetAuditRow(TrainerBase):
    """A dataset version's label-audit verdict (from DatasetAudited): policies wait for it."""

    __tablename__ = "trainer_dataset_audits"

    dataset_version: Mapped[str] = mapped_column(String(512), primary_key=True)
    #: The ``DatasetAuditInfo`` as JSON (verdict, reason, noise rate, suspected lines).
    info_json: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
