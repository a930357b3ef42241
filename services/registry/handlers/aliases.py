"""Aliases: GetAlias, ListAliasHistory and WatchAlias."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.resources import move_to_proto
from services.registry.domain import ALL_ALIASES, model_name, parse_alias_name
from services.registry.handlers._rows import alias_after_move, alias_state
from shared.errors import FieldViolation, InvalidArgument, NotFound
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size
from tuneline.registry.v1 import resources_pb2, service_pb2


def get_alias(session: Session, name: str) -> resources_pb2.Alias:
    model_id, alias = parse_alias_name(name)
    repo = RegistryRepository(session)
    if repo.get_model(model_name(model_id)) is None:
        raise NotFound("model", model_name(model_id))
    return alias_state(repo, model_name(model_id), alias)


def list_alias_history(
    session: Session, request: service_pb2.ListAliasHistoryRequest
) -> tuple[list[resources_pb2.AliasMove], str]:
    model_id, alias = parse_alias_name(request.name, allow_all=True)
    size = resolve_page_size(request.page_size)
    query = {"name": request.name}
    after = decode_page_token(request.page_token, query)
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
    token = encode_page_token(query, [page[-1].seq]) if len(rows) > size else ""
    return [move_to_proto(r) for r in page], token


def watch_alias_start(
    session: Session, name: str, after_revision: int
) -> tuple[str, str, list[service_pb2.WatchAliasResponse], int]:
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
        return model, alias, [service_pb2.WatchAliasResponse(alias=state)], state.revision
    moves = watch_alias_moves(session, model, alias, after_revision)
    last = moves[-1].move.revision if moves else after_revision
    return model, alias, moves, last


def watch_alias_moves(
    session: Session, model: str, alias: str, after_revision: int
) -> list[service_pb2.WatchAliasResponse]:
    """Every move of the alias after ``after_revision``, oldest first, with the alias after it."""
    repo = RegistryRepository(session)
    return [
        service_pb2.WatchAliasResponse(alias=alias_after_move(repo, move), move=move_to_proto(move))
        for move in repo.moves_after_revision(model, alias, after_revision)
    ]
