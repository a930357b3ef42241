"""The evaluator's tables (SQLite by default, PostgreSQL by URL).

What the service filters, orders, dedupes or claims on is a column; the rich rest of an
evaluation (metrics, comparisons, baseline, lineage) is the serialized
``tuneline.evaluator.v1.Evaluation`` of the contract, so what GetEvaluation answers is exactly
what was stored.

Besides evaluations the service keeps what it learned from other services' events: the
checkpoints the trainer announced (CheckpointReady), and where the rows of every split and
dataset version are (SplitCreated, DatasetVersioned) — an evaluation set names a split, and
the worker needs its manifest and JSONL.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class EvaluatorBase(DeclarativeBase):
    """Declarative base of the evaluator's own tables."""


class EvaluationRow(EvaluatorBase):
    """One evaluation. ``seq`` orders them (newest first in List) and keys the page tokens."""

    __tablename__ = "evaluator_evaluations"
    __table_args__ = (
        Index("ix_evaluator_evaluations_state_seq", "state", "seq"),
        Index("ix_evaluator_evaluations_sha256_model", "checkpoint_sha256", "model"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    checkpoint: Mapped[str] = mapped_column(String(300), index=True)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(80), index=True)
    state: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str] = mapped_column(String(24), default="")
    #: The evaluation sets' versions (see ``evaluation_sets_key``); empty until known.
    sets_key: Mapped[str] = mapped_column(String(2000), default="")
    #: "One evaluation per …": ``checkpoint-ready:<checkpoint>`` for evaluations a
    #: CheckpointReady created, ``request:<request_id>`` for EvaluateCheckpoint with an id.
    dedupe_key: Mapped[str | None] = mapped_column(String(400), unique=True, nullable=True)
    #: EvaluateCheckpoint's ``baseline_checkpoint`` (empty: production or the base model).
    requested_baseline: Mapped[str] = mapped_column(String(300), default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: A queued evaluation is not picked before this time (it waits for a dependency).
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: Since when it has been waiting for a dependency; empty when it is not waiting.
    waiting_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: The ``tuneline.evaluator.v1.Evaluation`` resource, serialized.
    resource: Mapped[bytes] = mapped_column(LargeBinary)


class CheckpointRow(EvaluatorBase):
    """A checkpoint the trainer announced; the CheckpointReady event is kept whole."""

    __tablename__ = "evaluator_checkpoints"

    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    target_model: Mapped[str] = mapped_column(String(80))
    is_best: Mapped[bool] = mapped_column(Boolean)
    is_final: Mapped[bool] = mapped_column(Boolean)
    #: The ``tuneline.trainer.v1.CheckpointReady`` event, serialized.
    event: Mapped[bytes] = mapped_column(LargeBinary)


class SplitLocationRow(EvaluatorBase):
    """Where a split's manifest and rows are (from SplitCreated)."""

    __tablename__ = "evaluator_split_locations"

    split: Mapped[str] = mapped_column(String(400), primary_key=True)
    dataset_version: Mapped[str] = mapped_column(String(300))
    manifest_uri: Mapped[str] = mapped_column(String(2000))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    dataset_artifact_uri: Mapped[str] = mapped_column(String(2000))
    dataset_content_sha256: Mapped[str] = mapped_column(String(64))


class DatasetVersionLocationRow(EvaluatorBase):
    """Where a dataset version's canonical JSONL is (from DatasetVersioned)."""

    __tablename__ = "evaluator_dataset_version_locations"

    dataset_version: Mapped[str] = mapped_column(String(300), primary_key=True)
    artifact_uri: Mapped[str] = mapped_column(String(2000))
    content_sha256: Mapped[str] = mapped_column(String(64))


class EvaluationPolicyRow(EvaluatorBase):
    """A model's evaluation policy, once set."""

    __tablename__ = "evaluator_policies"

    model: Mapped[str] = mapped_column(String(80), primary_key=True)
    checkpoint_selection: Mapped[str] = mapped_column(String(24))
    max_generation_examples: Mapped[int] = mapped_column(Integer)
    max_new_tokens: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EvaluationPolicyRequestRow(EvaluatorBase):
    """A SetEvaluationPolicy ``request_id`` already applied: its retry changes nothing."""

    __tablename__ = "evaluator_policy_requests"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    policy: Mapped[str] = mapped_column(String(200))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ScoredOutcomesRow(EvaluatorBase):
    """Per-example outcomes of one subject (checkpoint or bare base model) on one evaluation
    set version, under one scoring configuration. Baselines are looked up here, so a
    checkpoint scored once (as a candidate or as a baseline) is never scored again."""

    __tablename__ = "evaluator_scored_outcomes"
    __table_args__ = (
        UniqueConstraint(
            "subject_key", "set_key", "scoring_fingerprint", name="uq_evaluator_scored_outcomes"
        ),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_key: Mapped[str] = mapped_column(String(100))
    set_key: Mapped[str] = mapped_column(String(800))
    scoring_fingerprint: Mapped[str] = mapped_column(String(32))
    task_type: Mapped[str] = mapped_column(String(24))
    artifact_uri: Mapped[str] = mapped_column(String(2000))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    example_count: Mapped[int] = mapped_column(Integer)
    #: The evaluation whose run computed them.
    computed_by: Mapped[str] = mapped_column(String(80))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
