"""Checkpoints: CheckpointReady registers one with its lineage; GetCheckpoint, ListCheckpoints."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from services.registry.adapters.artifact_checks import LOCATION
from services.registry.adapters.commit_hooks import after_commit
from services.registry.adapters.model_definition import defined_base_model, defined_task_type
from services.registry.adapters.protos import (
    CHECKPOINT_READY,
    EVALUATION_COMPLETED,
    checkpoint_record_named,
    completed_evaluation_from_payload,
)
from services.registry.adapters.repository import APPLIED, PARKED, REFUSED, RegistryRepository
from services.registry.adapters.stored_resources import checkpoint_of
from services.registry.adapters.tables import CheckpointRow, ModelRow
from services.registry.domain.commands import CheckpointQuery
from services.registry.domain.events import ReadyCheckpoint, base_model_mismatch
from services.registry.domain.model import (
    ReviewState,
    Verdict,
    checkpoint_name,
    parse_checkpoint_name,
    parse_model_name,
    registry_checkpoint_id,
)
from services.registry.domain.resources import Checkpoint
from services.registry.handlers.artifact_refusals import artifact_refused
from services.registry.handlers.deferred import defer
from services.registry.handlers.deps import RegistryDeps
from services.registry.handlers.promotion import attach_evaluation
from services.registry.handlers.rows import checkpoint_in, checkpoint_resource
from shared.errors import InvalidArgument, NotFound
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size
from shared.task_types import TASK_TYPE_PREFIX

log = logging.getLogger(__name__)


def register_checkpoint(
    repo: RegistryRepository,
    deps: RegistryDeps,
    model: ModelRow,
    ready: ReadyCheckpoint,
    now: datetime,
) -> tuple[str, str]:
    """Register one CheckpointReady under ``model``; returns (deferred status, reason)."""
    if repo.get_checkpoint_by_source(model.name, ready.checkpoint) is not None:
        return APPLIED, "already registered"  # CheckpointReady repeats across resumes
    trained_for = ready.task_type
    model_task = defined_task_type(model)
    if ready.task_type_stated and trained_for != model_task:
        reason = (
            f"task type {TASK_TYPE_PREFIX}_{trained_for} is not the "
            f"model's {TASK_TYPE_PREFIX}_{model_task}"
        )
        log.warning("checkpoint refused", extra={"checkpoint": ready.checkpoint, "why": reason})
        return REFUSED, reason
    mismatch = base_model_mismatch(defined_base_model(model), ready.base_model)
    if mismatch:
        log.warning("checkpoint refused", extra={"checkpoint": ready.checkpoint, "why": mismatch})
        return REFUSED, mismatch
    outside = deps.artifacts.location_problem(ready.artifact_uri) if deps.artifacts else ""
    if outside:
        artifact_refused(deps, model.name, ready.checkpoint, LOCATION, outside)
        return REFUSED, outside
    name = checkpoint_name(
        model.name.removeprefix("models/"), registry_checkpoint_id(ready.checkpoint)
    )
    row = CheckpointRow(
        name=name,
        model=model.name,
        source_checkpoint=ready.checkpoint,
        training_job=ready.training_job,
        sha256=ready.sha256,
        record=checkpoint_record_named(ready.record, name),
        verdict=Verdict.UNSPECIFIED.value,
        review_state=ReviewState.NOT_REQUIRED.value,
        reviewer="",
        review_reason="",
        ever_production=False,
        rolled_back=False,
        create_time=ready.event_time or now,
    )
    repo.add_checkpoint(row)
    if deps.metrics:
        metrics = deps.metrics
        after_commit(
            repo.session,
            lambda: metrics.checkpoints_registered.labels(model.name.removeprefix("models/")).inc(),
        )
    # evaluations that arrived before the checkpoint (different topics are not ordered)
    for parked in repo.parked_events(
        model.name, EVALUATION_COMPLETED, source_checkpoint=ready.checkpoint
    ):
        evaluation = completed_evaluation_from_payload(parked.payload)
        attach_evaluation(repo, deps, model, row, evaluation, now)
        parked.status, parked.reason = APPLIED, f"attached to {name}"
    return APPLIED, f"registered as {name}"


def on_checkpoint_ready(
    session: Session,
    deps: RegistryDeps,
    ready: ReadyCheckpoint,
    *,
    event_id: str,
) -> None:
    """Register a checkpoint with its lineage.

    A checkpoint for a model that does not exist (yet) is neither dropped nor dead-lettered
    (the event is valid; the model may be created after training started) and no model is
    invented for it (a model needs its evaluation set and gate): it is PARKED and registered
    the moment CreateModel creates the model. One whose task type or base model contradicts
    the model is REFUSED and recorded with the reason.
    """
    repo = RegistryRepository(session)
    now = deps.clock()
    common = {
        "model": ready.target_model,
        "source_checkpoint": ready.checkpoint,
        "event_type": CHECKPOINT_READY,
        "event_id": event_id,
        "payload": ready.payload,
        "now": now,
    }
    try:
        registry_checkpoint_id(ready.checkpoint)
        parse_model_name(ready.target_model, field="target_model")
    except (ValueError, InvalidArgument) as error:
        defer(repo, deps, status=REFUSED, reason=str(error), **common)  # type: ignore[arg-type]
        return
    model = repo.lock_model(ready.target_model)
    if model is None:
        defer(repo, deps, status=PARKED, reason="the model does not exist (yet)", **common)  # type: ignore[arg-type]
        # CreateModel may have committed between the lock attempt and the park (the park's
        # INSERT now holds the write lock): register at once rather than strand the row.
        model = repo.lock_model(ready.target_model)
        if model is None:
            return
        for parked in repo.parked_events(
            model.name, CHECKPOINT_READY, source_checkpoint=ready.checkpoint
        ):
            parked.status, parked.reason = register_checkpoint(repo, deps, model, ready, now)
        return
    status, reason = register_checkpoint(repo, deps, model, ready, now)
    if status == REFUSED:
        defer(repo, deps, status=REFUSED, reason=reason, **common)  # type: ignore[arg-type]


def get_checkpoint(session: Session, name: str) -> Checkpoint:
    parse_checkpoint_name(name)
    repo = RegistryRepository(session)
    return checkpoint_resource(repo, checkpoint_in(repo, name))


def list_checkpoints(session: Session, query: CheckpointQuery) -> tuple[list[Checkpoint], str]:
    parse_model_name(query.parent, field="parent")
    size = resolve_page_size(query.page_size)
    token_query = {
        "parent": query.parent,
        "verdict": query.verdict.value if query.verdict else "",
        "review_state": query.review_state.value if query.review_state else "",
        "training_job": query.training_job,
    }
    after = decode_page_token(query.page_token, token_query)
    repo = RegistryRepository(session)
    if repo.get_model(query.parent) is None:
        raise NotFound("model", query.parent)
    rows = repo.list_checkpoints(
        query.parent,
        before_seq=int(after[0]) if after else None,
        limit=size + 1,
        verdict=query.verdict.value if query.verdict else "",
        review_state=query.review_state.value if query.review_state else "",
        training_job=query.training_job,
    )
    page = rows[:size]
    evaluations = repo.evaluations_of([r.name for r in page])
    aliases = repo.aliases_pointing_at(r.name for r in page)
    token = encode_page_token(token_query, [page[-1].seq]) if len(rows) > size else ""
    return [checkpoint_of(r, evaluations[r.name], aliases.get(r.name, [])) for r in page], token
