"""The registry's SQL repository: every query the handlers need, on one session.

Serialising writers per model: every transaction that may move an alias starts with
:meth:`RegistryRepository.lock_model`, an ``UPDATE`` of the model's row. On PostgreSQL that
takes the row lock until commit; on SQLite the first write of a transaction takes the
database's write lock (and Python's sqlite3 only opens the transaction at that write), so
every read that follows sees the latest committed state and no other writer can slip in
between the read and the move. Two triggers racing for one model therefore run one after the
other, and the second sees the first's rollback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.registry.adapters.tables import (
    AliasMoveRow,
    AliasRow,
    CheckpointRow,
    DeferredEventRow,
    EvaluationRow,
    LiveCountsRow,
    LiveQualityRow,
    ModelRow,
    RegressionRow,
    RollbackBreakerRow,
    TriggerKeyRow,
)
from services.registry.domain.model import PRODUCTION, MoveTrigger
from services.registry.domain.rollback import ProductionMove

PARKED = "PARKED"
APPLIED = "APPLIED"
REFUSED = "REFUSED"


class RegistryRepository:
    """Queries and writes of the registry's tables inside the caller's transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- models ---------------------------------------------------------------------------

    def lock_model(self, name: str) -> ModelRow | None:
        """Take the model's write lock for this transaction; ``None`` if it does not exist."""
        result = self.session.execute(
            update(ModelRow)
            .where(ModelRow.name == name)
            .values(lock_version=ModelRow.lock_version + 1)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            return None
        return self.session.get(ModelRow, name, populate_existing=True)

    def get_model(self, name: str) -> ModelRow | None:
        return self.session.get(ModelRow, name)

    def add_model(self, row: ModelRow) -> None:
        self.session.add(row)
        self.session.flush()

    def list_models(self, *, after_name: str | None, limit: int) -> list[ModelRow]:
        query = select(ModelRow).order_by(ModelRow.name).limit(limit)
        if after_name is not None:
            query = query.where(ModelRow.name > after_name)
        return list(self.session.scalars(query))

    # -- checkpoints ----------------------------------------------------------------------

    def get_checkpoint(self, name: str) -> CheckpointRow | None:
        return self.session.scalar(select(CheckpointRow).where(CheckpointRow.name == name))

    def get_checkpoint_by_source(self, model: str, source_checkpoint: str) -> CheckpointRow | None:
        return self.session.scalar(
            select(CheckpointRow).where(
                CheckpointRow.model == model, CheckpointRow.source_checkpoint == source_checkpoint
            )
        )

    def add_checkpoint(self, row: CheckpointRow) -> None:
        self.session.add(row)
        self.session.flush()

    def list_checkpoints(
        self,
        model: str,
        *,
        before_seq: int | None,
        limit: int,
        verdict: str = "",
        review_state: str = "",
        training_job: str = "",
    ) -> list[CheckpointRow]:
        """Newest first (registration order), filtered."""
        query = (
            select(CheckpointRow)
            .where(CheckpointRow.model == model)
            .order_by(CheckpointRow.seq.desc())
            .limit(limit)
        )
        if before_seq is not None:
            query = query.where(CheckpointRow.seq < before_seq)
        if verdict:
            query = query.where(CheckpointRow.verdict == verdict)
        if review_state:
            query = query.where(CheckpointRow.review_state == review_state)
        if training_job:
            query = query.where(CheckpointRow.training_job == training_job)
        return list(self.session.scalars(query))

    def checkpoints_named(self, names: Iterable[str]) -> dict[str, CheckpointRow]:
        wanted = {n for n in names if n}
        if not wanted:
            return {}
        rows = self.session.scalars(select(CheckpointRow).where(CheckpointRow.name.in_(wanted)))
        return {row.name: row for row in rows}

    def rolled_back_checkpoints(self, model: str) -> set[str]:
        return set(
            self.session.scalars(
                select(CheckpointRow.name).where(
                    CheckpointRow.model == model, CheckpointRow.rolled_back.is_(True)
                )
            )
        )

    def ever_production_checkpoints(self, model: str) -> set[str]:
        return set(
            self.session.scalars(
                select(CheckpointRow.name).where(
                    CheckpointRow.model == model, CheckpointRow.ever_production.is_(True)
                )
            )
        )

    # -- evaluations ----------------------------------------------------------------------

    def evaluations_of(self, checkpoints: Sequence[str]) -> dict[str, list[EvaluationRow]]:
        """Attached evaluations per checkpoint, oldest (by completion) first."""
        result: dict[str, list[EvaluationRow]] = {name: [] for name in checkpoints}
        if not checkpoints:
            return result
        rows = self.session.scalars(
            select(EvaluationRow)
            .where(EvaluationRow.checkpoint.in_(list(checkpoints)))
            .order_by(EvaluationRow.complete_time, EvaluationRow.seq)
        )
        for row in rows:
            result[row.checkpoint].append(row)
        return result

    def get_evaluation(self, checkpoint: str, evaluation: str) -> EvaluationRow | None:
        return self.session.scalar(
            select(EvaluationRow).where(
                EvaluationRow.checkpoint == checkpoint, EvaluationRow.evaluation == evaluation
            )
        )

    def add_evaluation(self, row: EvaluationRow) -> None:
        self.session.add(row)
        self.session.flush()

    def latest_passed_evaluation(self, checkpoint: str) -> EvaluationRow | None:
        return self.session.scalar(
            select(EvaluationRow)
            .where(EvaluationRow.checkpoint == checkpoint, EvaluationRow.verdict == "PASSED")
            .order_by(EvaluationRow.complete_time.desc(), EvaluationRow.seq.desc())
            .limit(1)
        )

    # -- aliases --------------------------------------------------------------------------

    def get_alias(self, model: str, alias: str) -> AliasRow | None:
        return self.session.get(AliasRow, (model, alias), populate_existing=True)

    def aliases_of_model(self, model: str) -> list[AliasRow]:
        return list(
            self.session.scalars(
                select(AliasRow).where(AliasRow.model == model).order_by(AliasRow.alias)
            )
        )

    def aliases_pointing_at(self, checkpoints: Iterable[str]) -> dict[str, list[str]]:
        wanted = {c for c in checkpoints if c}
        result: dict[str, list[str]] = {c: [] for c in wanted}
        if not wanted:
            return result
        rows = self.session.scalars(
            select(AliasRow).where(AliasRow.checkpoint.in_(wanted)).order_by(AliasRow.alias)
        )
        for row in rows:
            result[row.checkpoint].append(row.alias)
        return result

    def production_checkpoint(self, model: str) -> str:
        row = self.get_alias(model, PRODUCTION)
        return row.checkpoint if row else ""

    def move_alias(
        self,
        *,
        model: str,
        alias: str,
        to_checkpoint: CheckpointRow,
        trigger: MoveTrigger,
        actor: str,
        reason: str,
        cause: str,
        trigger_time: datetime,
        now: datetime,
    ) -> AliasMoveRow:
        """Point ``alias`` at ``to_checkpoint`` and append the move to its history.

        Callers hold the model lock (:meth:`lock_model`); the alias row, the history row and
        the checkpoints' flags change in the caller's transaction, together with the event the
        caller stages.
        """
        current = self.get_alias(model, alias)
        from_checkpoint = current.checkpoint if current else ""
        revision = (current.revision if current else 0) + 1
        if current is None:
            self.session.add(
                AliasRow(
                    model=model,
                    alias=alias,
                    checkpoint=to_checkpoint.name,
                    revision=revision,
                    update_time=now,
                )
            )
        else:
            current.checkpoint = to_checkpoint.name
            current.revision = revision
            current.update_time = now
        move = AliasMoveRow(
            model=model,
            alias=alias,
            revision=revision,
            from_checkpoint=from_checkpoint,
            to_checkpoint=to_checkpoint.name,
            trigger=trigger.value,
            actor=actor,
            reason=reason,
            cause=cause,
            trigger_time=trigger_time,
            move_time=now,
        )
        self.session.add(move)
        if alias == PRODUCTION:
            to_checkpoint.ever_production = True
            if trigger.marks_rolled_back and from_checkpoint:
                left = self.get_checkpoint(from_checkpoint)
                if left is not None:
                    left.rolled_back = True
        model_row = self.session.get(ModelRow, model)
        if model_row is not None:
            model_row.update_time = now
        self.session.flush()
        return move

    def production_moves(self, model: str) -> list[ProductionMove]:
        rows = self.session.scalars(
            select(AliasMoveRow)
            .where(AliasMoveRow.model == model, AliasMoveRow.alias == PRODUCTION)
            .order_by(AliasMoveRow.revision)
        )
        return [
            ProductionMove(
                revision=row.revision,
                from_checkpoint=row.from_checkpoint,
                to_checkpoint=row.to_checkpoint,
                trigger=MoveTrigger(row.trigger),
            )
            for row in rows
        ]

    def last_move(self, model: str, alias: str) -> AliasMoveRow | None:
        return self.session.scalar(
            select(AliasMoveRow)
            .where(AliasMoveRow.model == model, AliasMoveRow.alias == alias)
            .order_by(AliasMoveRow.revision.desc())
            .limit(1)
        )

    def newest_move_seq(self) -> int:
        """The sequence number of the newest alias move of any model (0 when none)."""
        return self.session.scalar(select(func.max(AliasMoveRow.seq))) or 0

    def moves_after_revision(self, model: str, alias: str, revision: int) -> list[AliasMoveRow]:
        return list(
            self.session.scalars(
                select(AliasMoveRow)
                .where(
                    AliasMoveRow.model == model,
                    AliasMoveRow.alias == alias,
                    AliasMoveRow.revision > revision,
                )
                .order_by(AliasMoveRow.revision)
            )
        )

    def list_moves(
        self, model: str, alias: str | None, *, after_seq: int | None, limit: int
    ) -> list[AliasMoveRow]:
        """Moves in the order they happened; ``alias=None`` means every alias of the model."""
        query = (
            select(AliasMoveRow)
            .where(AliasMoveRow.model == model)
            .order_by(AliasMoveRow.seq)
            .limit(limit)
        )
        if alias is not None:
            query = query.where(AliasMoveRow.alias == alias)
        if after_seq is not None:
            query = query.where(AliasMoveRow.seq > after_seq)
        return list(self.session.scalars(query))

    def get_move(self, seq: int) -> AliasMoveRow | None:
        return self.session.get(AliasMoveRow, seq)

    # -- idempotency ----------------------------------------------------------------------

    # -- the rollback circuit breaker ----------------------------------------------------

    def automatic_rollbacks_since(self, model: str, since: datetime) -> int:
        """Rollbacks of ``model``'s production by alert or regression from ``since`` on."""
        automatic = [MoveTrigger.ROLLBACK_ALERT.value, MoveTrigger.ROLLBACK_REGRESSION.value]
        return int(
            self.session.scalar(
                select(func.count())
                .select_from(AliasMoveRow)
                .where(
                    AliasMoveRow.model == model,
                    AliasMoveRow.alias == PRODUCTION,
                    AliasMoveRow.trigger.in_(automatic),
                    AliasMoveRow.move_time >= since,
                )
            )
            or 0
        )

    def last_move_by_a_person(self, model: str) -> datetime | None:
        """When a person last moved ``model``'s production (promotion, approval, rollback)."""
        by_people = [
            MoveTrigger.MANUAL.value,
            MoveTrigger.APPROVAL.value,
            MoveTrigger.ROLLBACK_MANUAL.value,
        ]
        return self.session.scalar(
            select(func.max(AliasMoveRow.move_time)).where(
                AliasMoveRow.model == model,
                AliasMoveRow.alias == PRODUCTION,
                AliasMoveRow.trigger.in_(by_people),
            )
        )

    def rollback_breaker(self, model: str) -> RollbackBreakerRow | None:
        return self.session.get(RollbackBreakerRow, model)

    def save_rollback_breaker(self, breaker: RollbackBreakerRow) -> None:
        self.session.merge(breaker)
        self.session.flush()

    def frozen_models(self) -> list[str]:
        return list(
            self.session.scalars(
                select(RollbackBreakerRow.model)
                .where(RollbackBreakerRow.frozen.is_(True))
                .order_by(RollbackBreakerRow.model)
            )
        )

    def trigger_key(self, model: str, key: str) -> TriggerKeyRow | None:
        return self.session.get(TriggerKeyRow, (model, key))

    def record_trigger_key(
        self, model: str, key: str, *, outcome: str, move: AliasMoveRow | None, now: datetime
    ) -> None:
        self.session.add(
            TriggerKeyRow(
                model=model,
                key=key,
                outcome=outcome,
                move_seq=move.seq if move is not None else None,
                recorded_at=now,
            )
        )

    # -- deferred events ------------------------------------------------------------------

    def defer_event(
        self,
        *,
        model: str,
        source_checkpoint: str,
        event_type: str,
        event_id: str,
        payload: bytes,
        status: str,
        reason: str,
        now: datetime,
    ) -> DeferredEventRow:
        row = DeferredEventRow(
            model=model,
            source_checkpoint=source_checkpoint,
            event_type=event_type,
            event_id=event_id,
            payload=payload,
            status=status,
            reason=reason,
            received_at=now,
        )
        self.session.add(row)
        self.session.flush()
        return row

    def parked_events(
        self, model: str, event_type: str, *, source_checkpoint: str | None = None
    ) -> list[DeferredEventRow]:
        query = (
            select(DeferredEventRow)
            .where(
                DeferredEventRow.model == model,
                DeferredEventRow.event_type == event_type,
                DeferredEventRow.status == PARKED,
            )
            .order_by(DeferredEventRow.seq)
        )
        if source_checkpoint is not None:
            query = query.where(DeferredEventRow.source_checkpoint == source_checkpoint)
        return list(self.session.scalars(query))

    def count_parked(self) -> int:
        return int(
            self.session.scalar(
                select(func.count())
                .select_from(DeferredEventRow)
                .where(DeferredEventRow.status == PARKED)
            )
            or 0
        )

    # -- regressions and live quality -----------------------------------------------------

    def get_regression(self, evaluation: str) -> RegressionRow | None:
        return self.session.get(RegressionRow, evaluation)

    def add_regression(self, row: RegressionRow) -> None:
        self.session.add(row)

    def upsert_live_quality(self, row: LiveQualityRow) -> None:
        self.session.merge(row)

    def live_quality_of(self, model: str, checkpoint: str) -> list[LiveQualityRow]:
        return list(
            self.session.scalars(
                select(LiveQualityRow).where(
                    LiveQualityRow.model == model, LiveQualityRow.checkpoint == checkpoint
                )
            )
        )

    def live_counts(
        self, model: str, checkpoint: str, metric: str, slice_name: str
    ) -> LiveCountsRow | None:
        return self.session.get(LiveCountsRow, (model, checkpoint, metric, slice_name))

    def upsert_live_counts(self, row: LiveCountsRow) -> None:
        self.session.merge(row)

    def live_counts_of(self, model: str, checkpoint: str) -> list[LiveCountsRow]:
        return list(
            self.session.scalars(
                select(LiveCountsRow).where(
                    LiveCountsRow.model == model, LiveCountsRow.checkpoint == checkpoint
                )
            )
        )

    def production_aliases(self) -> list[AliasRow]:
        return list(
            self.session.scalars(
                select(AliasRow).where(AliasRow.alias == PRODUCTION).order_by(AliasRow.model)
            )
        )
