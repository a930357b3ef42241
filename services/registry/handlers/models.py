"""Models: CreateModel (which registers the checkpoints parked for it), GetModel, ListModels and the
serving profile."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.registry.adapters.model_definition import (
    definition_to_store,
    serving_profile_problems,
    with_serving_profile,
)
from services.registry.adapters.protos import CHECKPOINT_READY, ready_checkpoint_from_payload
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.stored_resources import model_of
from services.registry.adapters.tables import ModelRow
from services.registry.domain.commands import CreateModel, SetServingProfile
from services.registry.domain.model import model_name, parse_model_name
from services.registry.domain.resources import Model
from services.registry.handlers.checkpoints import register_checkpoint
from services.registry.handlers.deps import RegistryDeps
from services.registry.handlers.request_checks import (
    earlier_request,
    optional_text,
    raise_if,
    request_key,
)
from services.registry.handlers.rows import model_resource
from shared.errors import AlreadyExists, InvalidArgument, NotFound
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size


def create_model(session: Session, deps: RegistryDeps, command: CreateModel) -> Model:
    """CreateModel: validate, store, then register checkpoints that were waiting for it.

    ``command.creator`` is the verified caller ("" on a server without auth), kept for four-eyes
    approval. A repeated ``request_id`` returns the model its first request created.
    """
    raise_if(optional_text(command.request_id, "request_id", limit=200), "the model is invalid")
    resolved = definition_to_store(command.model_id, command.definition, creator=command.creator)
    name = model_name(command.model_id)
    repo = RegistryRepository(session)
    key = request_key("create", command.request_id)
    existing = repo.get_model(name)
    if existing is not None:
        if earlier_request(repo, name, key, name) is not None:
            return model_resource(repo, existing)
        raise AlreadyExists("model", name)
    now = deps.clock()
    row = ModelRow(
        name=name,
        task_type=resolved.task_type,
        promotion_policy=resolved.promotion_policy.value,
        definition=resolved.definition,
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
    for parked in repo.parked_events(name, CHECKPOINT_READY):
        ready = ready_checkpoint_from_payload(parked.payload)
        parked.status, parked.reason = register_checkpoint(repo, deps, row, ready, now)
    return model_resource(repo, row)


def set_serving_profile(session: Session, deps: RegistryDeps, command: SetServingProfile) -> Model:
    """SetServingProfile: validate, store with the next revision (``None`` clears it), return
    the model; the next parity checks lint against the new profile."""
    parse_model_name(command.model, field="model")
    if command.serving_profile is not None:
        problems = serving_profile_problems(command.serving_profile)
        if problems:
            raise InvalidArgument("the serving profile is invalid", problems)
    repo = RegistryRepository(session)
    row: ModelRow | None = repo.lock_model(command.model)
    if row is None:
        raise NotFound("model", command.model)
    row.definition = with_serving_profile(row.definition, command.serving_profile)
    row.update_time = deps.clock()
    # answered without the automation freeze, as it always was (GetModel shows it)
    return model_of(row, repo.aliases_of_model(row.name), None)


def get_model(session: Session, name: str) -> Model:
    parse_model_name(name)
    repo = RegistryRepository(session)
    row = repo.get_model(name)
    if row is None:
        raise NotFound("model", name)
    return model_resource(repo, row)


def list_models(session: Session, page_size: int, page_token: str) -> tuple[list[Model], str]:
    size = resolve_page_size(page_size)
    after = decode_page_token(page_token, {})
    repo = RegistryRepository(session)
    rows = repo.list_models(after_name=str(after[0]) if after else None, limit=size + 1)
    page = rows[:size]
    token = encode_page_token({}, [page[-1].name]) if len(rows) > size else ""
    return [model_resource(repo, row) for row in page], token
