"""Models: CreateModel (which registers the checkpoints parked for it), GetModel, ListModels and the
serving profile."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.registry import releases
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.resources import policy_from_proto
from services.registry.adapters.tables import ModelRow
from services.registry.domain import model_name, parse_model_name
from services.registry.handlers._deferred import _CHECKPOINT_READY
from services.registry.handlers._requests import (
    _earlier_request,
    _optional_text,
    _raise_if,
    _request_key,
)
from services.registry.handlers._rows import _model_proto
from services.registry.handlers.checkpoints import _register_checkpoint
from services.registry.handlers.deps import RegistryDeps
from services.registry.validation import validate_new_model
from shared.errors import AlreadyExists, NotFound
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size
from tuneline.registry.v1 import resources_pb2, service_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events


def create_model(
    session: Session,
    deps: RegistryDeps,
    model_id: str,
    model: resources_pb2.Model | None,
    *,
    request_id: str = "",
    creator: str = "",
) -> resources_pb2.Model:
    """CreateModel: validate, store, then register checkpoints that were waiting for it.

    ``creator`` is the verified caller ("" on a server without auth), kept for four-eyes
    approval. A repeated ``request_id`` returns the model its first request created.
    """
    _raise_if(_optional_text(request_id, "request_id", limit=200), "the model is invalid")
    resolved = validate_new_model(model_id, model)
    resolved.creator = creator
    name = model_name(model_id)
    repo = RegistryRepository(session)
    key = _request_key("create", request_id)
    existing = repo.get_model(name)
    if existing is not None:
        if _earlier_request(repo, name, key, name) is not None:
            return _model_proto(repo, existing)
        raise AlreadyExists("model", name)
    now = deps.clock()
    row = ModelRow(
        name=name,
        task_type=resolved.task_type,
        promotion_policy=policy_from_proto(resolved.promotion_policy).value,
        definition=resolved.SerializeToString(deterministic=True),
        lock_version=0,
        create_time=now,
        update_time=now,
    )
    try:
        repo.add_model(row)
    except IntegrityError:  # created concurrently since the check above
        raise AlreadyExists("model", name) from None
    if key:
        repo.record_trigger_key(name, key, outcome=name, move=None, now=now)
    for parked in repo.parked_events(name, _CHECKPOINT_READY):
        message = trainer_events.CheckpointReady.FromString(parked.payload)
        parked.status, parked.reason = _register_checkpoint(repo, deps, row, message, now)
    return _model_proto(repo, row)


def set_serving_profile(
    session: Session, deps: RegistryDeps, request: service_pb2.SetServingProfileRequest
) -> resources_pb2.Model:
    """SetServingProfile: the next parity checks lint against the new profile."""
    return releases.set_serving_profile(RegistryRepository(session), request, deps.clock())


def get_model(session: Session, name: str) -> resources_pb2.Model:
    parse_model_name(name)
    repo = RegistryRepository(session)
    row = repo.get_model(name)
    if row is None:
        raise NotFound("model", name)
    return _model_proto(repo, row)


def list_models(
    session: Session, page_size: int, page_token: str
) -> tuple[list[resources_pb2.Model], str]:
    size = resolve_page_size(page_size)
    after = decode_page_token(page_token, {})
    repo = RegistryRepository(session)
    rows = repo.list_models(after_name=str(after[0]) if after else None, limit=size + 1)
    page = rows[:size]
    token = encode_page_token({}, [page[-1].name]) if len(rows) > size else ""
    return [_model_proto(repo, row) for row in page], token
