"""The registry's tables (SQLite by default, PostgreSQL by URL).

Rich, rarely-queried parts of a resource (a model's evaluation sets and gate policy, a
checkpoint's lineage and cost, an evaluation's metrics) are stored as the serialized protobuf
message of the contract; everything the registry filters, orders or locks on is a column.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out (SQLite forgets the offset; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware UTC time")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RegistryBase(DeclarativeBase):
    """Declarative base of the registry's own tables."""


class ModelRow(RegistryBase):
    """A model. ``lock_version`` is bumped by every alias-moving transaction (see the repo)."""

    __tablename__ = "registry_models"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    task_type: Mapped[int] = mapped_column(Integer)
    promotion_policy: Mapped[str] = mapped_column(String(16))
    #: The ``tuneline.registry.v1.Model`` as created, defaults resolved, output fields empty.
    definition: Mapped[bytes] = mapped_column(LargeBinary)
    lock_version: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class CheckpointRow(RegistryBase):
    """A registered checkpoint: lineage from CheckpointReady plus its standing in the registry."""

    __tablename__ = "registry_checkpoints"
    __table_args__ = (
        UniqueConstraint("model", "source_checkpoint", name="uq_registry_checkpoint_source"),
        Index("ix_registry_checkpoints_model_seq", "model", "seq"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(300), unique=True)
    model: Mapped[str] = mapped_column(String(80))
    source_checkpoint: Mapped[str] = mapped_column(String(300))
    training_job: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    #: The registry ``Checkpoint`` as registered (lineage, cost …), standing fields empty.
    record: Mapped[bytes] = mapped_column(LargeBinary)
    verdict: Mapped[str] = mapped_column(String(24), default="UNSPECIFIED")
    latest_evaluation_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    review_state: Mapped[str] = mapped_column(String(16), default="NOT_REQUIRED")
    reviewer: Mapped[str] = mapped_column(String(200), default="")
    review_reason: Mapped[str] = mapped_column(Text, default="")
    review_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    ever_production: Mapped[bool] = mapped_column(Boolean, default=False)
    rolled_back: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())


class EvaluationRow(RegistryBase):
    """An evaluation attached to a checkpoint (EvaluationCompleted), and what it decided."""

    __tablename__ = "registry_evaluations"
    __table_args__ = (UniqueConstraint("checkpoint", "evaluation", name="uq_registry_evaluation"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checkpoint: Mapped[str] = mapped_column(String(300), index=True)
    evaluation: Mapped[str] = mapped_column(String(200))
    verdict: Mapped[str] = mapped_column(String(24))
    complete_time: Mapped[datetime] = mapped_column(UtcDateTime())
    #: The ``CheckpointEvaluation`` message.
    record: Mapped[bytes] = mapped_column(LargeBinary)
    decision: Mapped[str] = mapped_column(String(16), default="")
    decision_reason: Mapped[str] = mapped_column(Text, default="")


class AliasRow(RegistryBase):
    """Where an alias points now; ``revision`` counts its moves."""

    __tablename__ = "registry_aliases"

    model: Mapped[str] = mapped_column(String(80), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    checkpoint: Mapped[str] = mapped_column(String(300))
    revision: Mapped[int] = mapped_column(Integer)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class AliasMoveRow(RegistryBase):
    """One move of an alias. Append-only: rows are inserted, never updated or deleted."""

    __tablename__ = "registry_alias_moves"
    __table_args__ = (
        UniqueConstraint("model", "alias", "revision", name="uq_registry_alias_revision"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(80), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer)
    from_checkpoint: Mapped[str] = mapped_column(String(300))
    to_checkpoint: Mapped[str] = mapped_column(String(300))
    trigger: Mapped[str] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    cause: Mapped[str] = mapped_column(String(300))
    trigger_time: Mapped[datetime] = mapped_column(UtcDateTime())
    move_time: Mapped[datetime] = mapped_column(UtcDateTime())


class TriggerKeyRow(RegistryBase):
    """A trigger already acted on (an evaluation, an alert incident, an RPC request id)."""

    __tablename__ = "registry_trigger_keys"

    model: Mapped[str] = mapped_column(String(80), primary_key=True)
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    outcome: Mapped[str] = mapped_column(Text)
    #: The alias move it made, when it made one.
    move_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RollbackBreakerRow(RegistryBase):
    """A model's rollback circuit breaker: frozen or not, and from when rollbacks count.

    While ``frozen``, nothing automatic moves the model's production: no promotion by
    evaluation, no rollback by alert or regression. Unfreezing sets ``counted_since``, so the
    rollbacks that tripped the breaker do not trip it again at once.
    """

    __tablename__ = "registry_rollback_breakers"

    model: Mapped[str] = mapped_column(String(80), primary_key=True)
    frozen: Mapped[bool] = mapped_column(Boolean)
    freeze_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    #: What tripped the breaker: the refused trigger's cause.
    cause: Mapped[str] = mapped_column(String(300))
    automatic_rollbacks: Mapped[int] = mapped_column(Integer)
    #: Automatic rollbacks before this (the last unfreeze) no longer count.
    counted_since: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class DeferredEventRow(RegistryBase):
    """An event kept because what it refers to is not registered (yet), or was refused.

    PARKED rows are applied when the model is created (CheckpointReady) or the checkpoint is
    registered (EvaluationCompleted); REFUSED rows record why a checkpoint was not registered.
    """

    __tablename__ = "registry_deferred_events"
    __table_args__ = (Index("ix_registry_deferred_lookup", "model", "status", "source_checkpoint"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(80))
    source_checkpoint: Mapped[str] = mapped_column(String(300))
    event_type: Mapped[str] = mapped_column(String(200))
    event_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RegressionRow(RegistryBase):
    """A RegressionDetected the registry received, and what it did about it."""

    __tablename__ = "registry_regressions"

    evaluation: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(80), index=True)
    source_checkpoint: Mapped[str] = mapped_column(String(300))
    metric: Mapped[str] = mapped_column(String(120))
    slice: Mapped[str] = mapped_column(String(200))
    delta: Mapped[float] = mapped_column(Float)
    p_value: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class LiveQualityRow(RegistryBase):
    """The latest live quality report per (model, checkpoint, metric, slice)."""

    __tablename__ = "registry_live_quality"

    model: Mapped[str] = mapped_column(String(80), primary_key=True)
    checkpoint: Mapped[str] = mapped_column(String(300), primary_key=True)
    metric: Mapped[str] = mapped_column(String(120), primary_key=True)
    slice: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    example_count: Mapped[int] = mapped_column(Integer)
    window_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    floor: Mapped[float | None] = mapped_column(Float, nullable=True)
    below_floor: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(200))
    report_time: Mapped[datetime] = mapped_column(UtcDateTime())


class LiveCountsRow(RegistryBase):
    """Counted live quality per (model, checkpoint, metric, slice): the outcomes reported so
    far and the bounds of their confidence sequence (a table of its own, so that databases
    created before counts existed gain it without a migration)."""

    __tablename__ = "registry_live_counts"

    model: Mapped[str] = mapped_column(String(80), primary_key=True)
    checkpoint: Mapped[str] = mapped_column(String(300), primary_key=True)
    metric: Mapped[str] = mapped_column(String(120), primary_key=True)
    slice: Mapped[str] = mapped_column(String(200), primary_key=True)
    successes: Mapped[int] = mapped_column(Integer)
    trials: Mapped[int] = mapped_column(Integer)
    lower_bound: Mapped[float] = mapped_column(Float)
    upper_bound: Mapped[float] = mapped_column(Float)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())
