"""The stored rows as the domain's resources (``domain/resources.py``): what the handlers answer
with, before ``adapters/protos.py`` turns it into the contract's messages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from services.registry.adapters.tables import (
    AliasMoveRow,
    AliasRow,
    CheckpointRow,
    EvaluationRow,
    ModelRow,
    RollbackBreakerRow,
)
from services.registry.domain.model import (
    CANDIDATE,
    PRODUCTION,
    MoveTrigger,
    ReviewState,
    Verdict,
)
from services.registry.domain.resources import (
    Alias,
    AliasMove,
    AutomationFreeze,
    Checkpoint,
    CheckpointEvaluation,
    Model,
)


def alias_move_of(row: AliasMoveRow) -> AliasMove:
    return AliasMove(
        model=row.model,
        alias=row.alias,
        revision=row.revision,
        from_checkpoint=row.from_checkpoint,
        to_checkpoint=row.to_checkpoint,
        trigger=MoveTrigger(row.trigger),
        actor=row.actor,
        reason=row.reason,
        cause=row.cause,
        trigger_time=row.trigger_time,
        move_time=row.move_time,
    )


def alias_of(
    model: str,
    alias: str,
    *,
    checkpoint: CheckpointRow | None,
    revision: int,
    last_move: AliasMoveRow | None,
) -> Alias:
    return Alias(
        model=model,
        alias=alias,
        checkpoint=checkpoint.name if checkpoint else "",
        revision=revision,
        last_move=alias_move_of(last_move) if last_move is not None else None,
        checkpoint_record=checkpoint.record if checkpoint is not None else None,
    )


def model_of(
    row: ModelRow, aliases: Iterable[AliasRow], breaker: RollbackBreakerRow | None
) -> Model:
    """``breaker`` is the model's rollback circuit breaker; ``None`` leaves the freeze out."""
    by_alias = {a.alias: a.checkpoint for a in aliases}
    freeze = None
    if breaker is not None and breaker.frozen and breaker.freeze_time is not None:
        freeze = AutomationFreeze(
            reason=breaker.reason,
            cause=breaker.cause,
            automatic_rollbacks=breaker.automatic_rollbacks,
            freeze_time=breaker.freeze_time,
        )
    return Model(
        name=row.name,
        definition=row.definition,
        production_checkpoint=by_alias.get(PRODUCTION, ""),
        candidate_checkpoint=by_alias.get(CANDIDATE, ""),
        create_time=row.create_time,
        update_time=row.update_time,
        automation_freeze=freeze,
    )


def checkpoint_of(
    row: CheckpointRow, evaluations: Sequence[EvaluationRow], aliases: Iterable[str]
) -> Checkpoint:
    return Checkpoint(
        name=row.name,
        record=row.record,
        evaluations=tuple(
            CheckpointEvaluation(e.record, e.decision, e.decision_reason) for e in evaluations
        ),
        verdict=Verdict(row.verdict),
        review_state=ReviewState(row.review_state),
        reviewer=row.reviewer,
        review_reason=row.review_reason,
        review_time=row.review_time,
        aliases=tuple(sorted(aliases)),
        ever_production=row.ever_production,
        rolled_back=row.rolled_back,
        create_time=row.create_time,
    )
