"""Aliases: GetAlias, ListAliasHistory and WatchAlias."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.stored_resources import alias_move_of
from services.registry.domain.commands import AliasHistoryQuery
from services.registry.domain.model import ALL_ALIASES, model_name, parse_alias_name
from services.registry.domain.resources import Alias, AliasMove
from services.registry.handlers.rows import alias_after_move, alias_state
from shared.errors import FieldViolation, InvalidArgument, NotFound
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size


def get_alias(session: Session, name: str) -> Alias:
    model_id, alias = parse_alias_name(name)
    repo = RegistryRepository(session)
    if repo.get_model(model_name(model_id)) is None:
        raise NotFound("model", model_name(model_id))
    return alias_state(repo, model_name(model_id), alias)


def list_alias_history(session: Session, query: AliasHistoryQuery) -> tuple[list[AliasMove], str]:
    model_id, alias = parse_alias_name(query.name, allow_all=True)
    size = resolve_page_size(query.page_size)
    token_query = {"name": query.name}
    after = decode_page_token(query.page_token, token_query)
    repo = RegistryRepository(session)
    if repo.get_model(model_name(model_id)) is None:
        raise NotFound("model", model_name(model_id))
    rows = repo.list_moves(
        model_name(model_id),
        None if alias == ALL_ALIASES else alias,
        after_seq=int(after[0]) if after else None,
        limit=size + 1,
    )
    page = rows[:size]
    token = encode_page_token(token_query, [page[-1].seq]) if len(rows) > size else ""
    return [alias_move_of(r) for r in page], token


@dataclass(frozen=True)
class AliasUpdate:
    """One message of WatchAlias: the alias, and the move that put it there (``None`` for the
    state a watch from revision 0 starts with)."""

    alias: Alias
    move: AliasMove | None = None


def watch_alias_start(
    session: Session, name: str, after_revision: int
) -> tuple[str, str, list[AliasUpdate], int]:
    """The first messages of WatchAlias and the revision the stream continues after."""
    model_id, alias = parse_alias_name(name)
    if after_revision < 0:
        raise InvalidArgument(
            "after_revision must not be negative",
            [FieldViolation("after_revision", "must be >= 0", "OUT_OF_RANGE")],
        )
    model = model_name(model_id)
    repo = RegistryRepository(session)
    if repo.get_model(model) is None:
        raise NotFound("model", model)
    if after_revision == 0:
        state = alias_state(repo, model, alias)
        return model, alias, [AliasUpdate(state)], state.revision
    moves = watch_alias_moves(session, model, alias, after_revision)
    last = moves[-1].alias.revision if moves else after_revision
    return model, alias, moves, last


def watch_alias_moves(
    session: Session, model: str, alias: str, after_revision: int
) -> list[AliasUpdate]:
    """Every move of the alias after ``after_revision``, oldest first, with the alias after it."""
    repo = RegistryRepository(session)
    return [
        AliasUpdate(alias_after_move(repo, move), alias_move_of(move))
        for move in repo.moves_after_revision(model, alias, after_revision)
    ]
