"""Checkpoints: CheckpointReady registers one with its lineage; GetCheckpoint, ListCheckpoints."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from services.registry.adapters.artifact_checks import LOCATION
from services.registry.adapters.commit_hooks import after_commit
from services.registry.adapters.repository import APPLIED, PARKED, REFUSED, RegistryRepository
from services.registry.adapters.resources import checkpoint_to_proto, verdict_from_proto
from services.registry.adapters.tables import CheckpointRow, ModelRow
from services.registry.domain import (
    ReviewState,
    Verdict,
    checkpoint_name,
    parse_checkpoint_name,
    parse_model_name,
    registry_checkpoint_id,
)
from services.registry.handlers._artifacts import _artifact_refused
from services.registry.handlers._deferred import _CHECKPOINT_READY, _EVALUATION_COMPLETED, _defer
from services.registry.handlers._rows import _checkpoint_in, _checkpoint_proto
from services.registry.handlers.deps import RegistryDeps
from services.registry.handlers.promotion import _attach_evaluation
from shared.errors import InvalidArgument, NotFound
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size
from shared.protobuf import datetime_from_timestamp
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.registry.v1 import resources_pb2, service_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2

log = logging.getLogger(__name__)

#: CheckpointReady stop reasons of a partly trained adapter: never promoted automatically.
_INTERRUPTED_TRAINING = frozenset(
    {trainer_pb2.TRAINING_STOP_REASON_CANCELLED, trainer_pb2.TRAINING_STOP_REASON_FAILED}
)


def _base_model_mismatch(
    model_base: common_pb2.BaseModel, lineage_base: common_pb2.BaseModel
) -> str:
    """Why a checkpoint's base model is not the model's, or ``""`` when it is."""
    source = model_base.WhichOneof("source")
    if lineage_base.WhichOneof("source") is None:
        return ""  # the trainer always sets it; an older producer may not: don't refuse on that
    if source and getattr(model_base, source) != getattr(lineage_base, source, ""):
        return (
            f"trained on {lineage_base.WhichOneof('source')}="
            f"{getattr(lineage_base, lineage_base.WhichOneof('source') or '')!r}, "
            f"the model's base is {source}={getattr(model_base, source)!r}"
        )
    if (
        model_base.files_sha256
        and lineage_base.files_sha256
        and model_base.files_sha256 != lineage_base.files_sha256
    ):
        return "the base model's files_sha256 differs from the model's"
    return ""


def _register_checkpoint(
    repo: RegistryRepository,
    deps: RegistryDeps,
    model: ModelRow,
    message: trainer_events.CheckpointReady,
    now: datetime,
) -> tuple[str, str]:
    """Register one CheckpointReady under ``model``; returns (deferred status, reason)."""
    if repo.get_checkpoint_by_source(model.name, message.checkpoint) is not None:
        return APPLIED, "already registered"  # CheckpointReady repeats across resumes
    definition = resources_pb2.Model.FromString(model.definition)
    if message.lineage.task_type and message.lineage.task_type != model.task_type:
        reason = (
            f"task type {common_pb2.TaskType.Name(message.lineage.task_type)} is not the "
            f"model's {common_pb2.TaskType.Name(definition.task_type)}"
        )
        log.warning("checkpoint refused", extra={"checkpoint": message.checkpoint, "why": reason})
        return REFUSED, reason
    mismatch = _base_model_mismatch(definition.base_model, message.lineage.base_model)
    if mismatch:
        log.warning("checkpoint refused", extra={"checkpoint": message.checkpoint, "why": mismatch})
        return REFUSED, mismatch
    outside = deps.artifacts.location_problem(message.artifact_uri) if deps.artifacts else ""
    if outside:
        _artifact_refused(deps, model.name, message.checkpoint, LOCATION, outside)
        return REFUSED, outside
    name = checkpoint_name(
        model.name.removeprefix("models/"), registry_checkpoint_id(message.checkpoint)
    )
    record = resources_pb2.Checkpoint(
        name=name,
        source_checkpoint=message.checkpoint,
        training_job=message.training_job,
        step=message.step,
        epoch=message.epoch,
        train_loss=message.train_loss,
        tokens_seen=message.tokens_seen,
        artifact_uri=message.artifact_uri,
        sha256=message.sha256,
        size_bytes=message.size_bytes,
        lineage=message.lineage,
        cost=message.cost,
        training_interrupted=message.stop_reason in _INTERRUPTED_TRAINING,
        job_creator=message.job_creator,  # four eyes: it may not approve the checkpoint
    )
    if message.HasField("validation_loss"):
        record.validation_loss = message.validation_loss
    if message.HasField("tokenizer_fingerprint"):
        record.tokenizer_fingerprint.CopyFrom(message.tokenizer_fingerprint)
    row = CheckpointRow(
        name=name,
        model=model.name,
        source_checkpoint=message.checkpoint,
        training_job=message.training_job,
        sha256=message.sha256,
        record=record.SerializeToString(deterministic=True),
        verdict=Verdict.UNSPECIFIED.value,
        review_state=ReviewState.NOT_REQUIRED.value,
        reviewer="",
        review_reason="",
        ever_production=False,
        rolled_back=False,
        create_time=datetime_from_timestamp(message, "event_time") or now,
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
        model.name, _EVALUATION_COMPLETED, source_checkpoint=message.checkpoint
    ):
        evaluation = evaluator_events.EvaluationCompleted.FromString(parked.payload)
        _attach_evaluation(repo, deps, model, row, evaluation, now)
        parked.status, parked.reason = APPLIED, f"attached to {name}"
    return APPLIED, f"registered as {name}"


def on_checkpoint_ready(
    session: Session,
    deps: RegistryDeps,
    message: trainer_events.CheckpointReady,
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
    payload = message.SerializeToString(deterministic=True)
    common = {
        "model": message.target_model,
        "source_checkpoint": message.checkpoint,
        "event_type": _CHECKPOINT_READY,
        "event_id": event_id,
        "payload": payload,
        "now": now,
    }
    try:
        registry_checkpoint_id(message.checkpoint)
        parse_model_name(message.target_model, field="target_model")
    except (ValueError, InvalidArgument) as error:
        _defer(repo, deps, status=REFUSED, reason=str(error), **common)  # type: ignore[arg-type]
        return
    model = repo.lock_model(message.target_model)
    if model is None:
        _defer(repo, deps, status=PARKED, reason="the model does not exist (yet)", **common)  # type: ignore[arg-type]
        # CreateModel may have committed between the lock attempt and the park (the park's
        # INSERT now holds the write lock): register at once rather than strand the row.
        model = repo.lock_model(message.target_model)
        if model is None:
            return
        for parked in repo.parked_events(
            model.name, _CHECKPOINT_READY, source_checkpoint=message.checkpoint
        ):
            parked.status, parked.reason = _register_checkpoint(repo, deps, model, message, now)
        return
    status, reason = _register_checkpoint(repo, deps, model, message, now)
    if status == REFUSED:
        _defer(repo, deps, status=REFUSED, reason=reason, **common)  # type: ignore[arg-type]


def get_checkpoint(session: Session, name: str) -> resources_pb2.Checkpoint:
    parse_checkpoint_name(name)
    repo = RegistryRepository(session)
    return _checkpoint_proto(repo, _checkpoint_in(repo, name))


def list_checkpoints(
    session: Session, request: service_pb2.ListCheckpointsRequest
) -> tuple[list[resources_pb2.Checkpoint], str]:
    parse_model_name(request.parent, field="parent")
    size = resolve_page_size(request.page_size)
    query = {
        "parent": request.parent,
        "verdict": str(request.verdict),
        "review_state": str(request.review_state),
        "training_job": request.training_job,
    }
    after = decode_page_token(request.page_token, query)
    repo = RegistryRepository(session)
    if repo.get_model(request.parent) is None:
        raise NotFound("model", request.parent)
    review = request.review_state
    rows = repo.list_checkpoints(
        request.parent,
        before_seq=int(after[0]) if after else None,
        limit=size + 1,
        verdict=verdict_from_proto(request.verdict).value if request.verdict else "",
        review_state=resources_pb2.ReviewState.Name(review).removeprefix("REVIEW_STATE_")
        if review
        else "",
        training_job=request.training_job,
    )
    page = rows[:size]
    evaluations = repo.evaluations_of([r.name for r in page])
    aliases = repo.aliases_pointing_at(r.name for r in page)
    token = encode_page_token(query, [page[-1].seq]) if len(rows) > size else ""
    return [
        checkpoint_to_proto(r, evaluations[r.name], aliases.get(r.name, [])) for r in page
    ], token
