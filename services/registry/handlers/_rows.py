"""The rows the handlers lock and read, as protos; alias states and the notice of a committed
move."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.registry.adapters.commit_hooks import after_commit
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.resources import alias_to_proto, checkpoint_to_proto, model_to_proto
from services.registry.adapters.tables import AliasMoveRow, CheckpointRow, ModelRow
from services.registry.handlers.deps import RegistryDeps
from shared.errors import NotFound
from shared.protobuf import set_timestamp
from tuneline.registry.v1 import resources_pb2


def _locked_model(repo: RegistryRepository, name: str) -> ModelRow:
    row = repo.lock_model(name)
    if row is None:
        raise NotFound("model", name)
    return row


def _checkpoint_in(repo: RegistryRepository, name: str) -> CheckpointRow:
    row = repo.get_checkpoint(name)
    if row is None:
        raise NotFound("checkpoint", name)
    return row


def _model_proto(repo: RegistryRepository, row: ModelRow) -> resources_pb2.Model:
    model = model_to_proto(row, repo.aliases_of_model(row.name))
    freeze = repo.rollback_breaker(row.name)
    if freeze is not None and freeze.frozen and freeze.freeze_time is not None:
        model.automation_freeze.CopyFrom(
            resources_pb2.AutomationFreeze(
                reason=freeze.reason,
                cause=freeze.cause,
                automatic_rollbacks=freeze.automatic_rollbacks,
            )
        )
        set_timestamp(model.automation_freeze.freeze_time, freeze.freeze_time)
    return model


def _checkpoint_proto(repo: RegistryRepository, row: CheckpointRow) -> resources_pb2.Checkpoint:
    evaluations = repo.evaluations_of([row.name])[row.name]
    aliases = repo.aliases_pointing_at([row.name]).get(row.name, [])
    return checkpoint_to_proto(row, evaluations, aliases)


def alias_state(repo: RegistryRepository, model: str, alias: str) -> resources_pb2.Alias:
    """An alias now (``revision`` 0 and no checkpoint when never set)."""
    row = repo.get_alias(model, alias)
    checkpoint = repo.get_checkpoint(row.checkpoint) if row else None
    last_move = repo.last_move(model, alias) if row else None
    return alias_to_proto(
        model,
        alias,
        checkpoint=checkpoint,
        revision=row.revision if row else 0,
        last_move=last_move,
    )


def alias_after_move(repo: RegistryRepository, move: AliasMoveRow) -> resources_pb2.Alias:
    """The alias as it was right after ``move`` (what WatchAlias sends with each move)."""
    return alias_to_proto(
        move.model,
        move.alias,
        checkpoint=repo.get_checkpoint(move.to_checkpoint),
        revision=move.revision,
        last_move=move,
    )


def _notify_moved(session: Session, deps: RegistryDeps) -> None:
    after_commit(session, deps.notifier.notify)
    after_commit(session, deps.wake_relay)
