"""The rows the handlers lock and read, and what they answer with: the domain's resources
(models, checkpoints, alias states); the notice of a committed move."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.registry.adapters.commit_hooks import after_commit
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.stored_resources import alias_of, checkpoint_of, model_of
from services.registry.adapters.tables import AliasMoveRow, CheckpointRow, ModelRow
from services.registry.domain.resources import Alias, Checkpoint, Model
from services.registry.handlers.deps import RegistryDeps
from shared.errors import NotFound


def locked_model(repo: RegistryRepository, name: str) -> ModelRow:
    row = repo.lock_model(name)
    if row is None:
        raise NotFound("model", name)
    return row


def checkpoint_in(repo: RegistryRepository, name: str) -> CheckpointRow:
    row = repo.get_checkpoint(name)
    if row is None:
        raise NotFound("checkpoint", name)
    return row


def model_resource(repo: RegistryRepository, row: ModelRow) -> Model:
    return model_of(row, repo.aliases_of_model(row.name), repo.rollback_breaker(row.name))


def checkpoint_resource(repo: RegistryRepository, row: CheckpointRow) -> Checkpoint:
    evaluations = repo.evaluations_of([row.name])[row.name]
    aliases = repo.aliases_pointing_at([row.name]).get(row.name, [])
    return checkpoint_of(row, evaluations, aliases)


def alias_state(repo: RegistryRepository, model: str, alias: str) -> Alias:
    """An alias now (``revision`` 0 and no checkpoint when never set)."""
    row = repo.get_alias(model, alias)
    checkpoint = repo.get_checkpoint(row.checkpoint) if row else None
    last_move = repo.last_move(model, alias) if row else None
    return alias_of(
        model,
        alias,
        checkpoint=checkpoint,
        revision=row.revision if row else 0,
        last_move=last_move,
    )


def alias_after_move(repo: RegistryRepository, move: AliasMoveRow) -> Alias:
    """The alias as it was right after ``move`` (what WatchAlias sends with each move)."""
    return alias_of(
        move.model,
        move.alias,
        checkpoint=repo.get_checkpoint(move.to_checkpoint),
        revision=move.revision,
        last_move=move,
    )


def notify_moved(session: Session, deps: RegistryDeps) -> None:
    after_commit(session, deps.notifier.notify)
    after_commit(session, deps.wake_relay)
