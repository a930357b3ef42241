"""Events, applied in the consumer loop's transaction: a CheckpointReady records the checkpoint and,
when the model's checkpoint selection takes it, a QUEUED evaluation — nothing more, so the
partition is never blocked by minutes of scoring; SplitCreated / DatasetVersioned record where
evaluation sets' rows are. The subscriptions convert each event to its domain value first
(:mod:`services.evaluator.domain.events`).
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from services.evaluator.adapters.repository import CHECKPOINT_READY_KEY, EvaluatorRepository
from services.evaluator.domain.evaluation import (
    CheckpointRef,
    CheckpointSelection,
    Evaluation,
    best_at_end,
    best_at_end_reason,
    new_evaluation_name,
)
from services.evaluator.domain.events import (
    DatasetVersionLocation,
    ReadyCheckpoint,
    SplitLocation,
)
from services.evaluator.handlers.deps import EvaluatorDeps, effective_policy
from shared.artifacts import artifact_uri_problem
from shared.errors import FieldViolation, InvalidArgument

log = logging.getLogger(__name__)


def on_checkpoint_ready(
    session: Session,
    deps: EvaluatorDeps,
    ready: ReadyCheckpoint,
    *,
    trainer_artifact_root: str | None = None,
) -> Evaluation | None:
    """Record the checkpoint; queue its evaluation when the model's selection takes it.

    One evaluation per checkpoint: a second CheckpointReady for the same checkpoint (a
    redelivery with a new event id, a re-announcement after a restart) queues nothing.

    A checkpoint whose ``artifact_uri`` does not lie under ``trainer_artifact_root`` (a URI,
    see :func:`shared.artifacts.artifact_uri_problem`; None checks nothing) is not the
    trainer's: INVALID_ARGUMENT, so the event goes to the DLQ and nothing is recorded or scored.
    """
    outside = (
        artifact_uri_problem(ready.checkpoint.artifact_uri, trainer_artifact_root)
        if trainer_artifact_root is not None
        else ""
    )
    if outside:
        log.error(
            "checkpoint refused: its artifact is not in the trainer's artifact area",
            extra={"checkpoint": ready.checkpoint.name, "why": outside},
        )
        raise InvalidArgument(
            "artifact_uri is not in the trainer's artifact area",
            [FieldViolation("artifact_uri", outside, "OUTSIDE_ARTIFACT_ROOT")],
        )
    repository = EvaluatorRepository(session)
    checkpoint = repository.record_checkpoint(ready)
    if not checkpoint.target_model:
        log.warning("checkpoint without a target model", extra={"checkpoint": checkpoint.name})
        return None
    policy = effective_policy(repository, checkpoint.target_model, deps.defaults)
    selection = policy.checkpoint_selection
    if selection is CheckpointSelection.BEST_AT_END:
        chosen = _best_at_end(repository, checkpoint)
    elif selection.selects(is_best=checkpoint.is_best, is_final=checkpoint.is_final):
        chosen = (checkpoint, selection.reason(checkpoint))
    else:
        chosen = None
    if chosen is None:
        if deps.metrics:
            deps.metrics.skipped.labels(checkpoint.target_model.rsplit("/", 1)[-1]).inc()
        return None
    target, reason = chosen
    dedupe_key = CHECKPOINT_READY_KEY + target.name
    if repository.by_dedupe_key(dedupe_key) is not None:
        return None
    evaluation = Evaluation(
        name=new_evaluation_name(),
        checkpoint=target,
        model=target.target_model,
        create_time=deps.clock(),
        task_type=target.task_type,
        selection=selection,
        selection_reason=reason,
    )
    repository.add_evaluation(evaluation, dedupe_key=dedupe_key)
    return evaluation


def _best_at_end(
    repository: EvaluatorRepository, announced: CheckpointRef
) -> tuple[CheckpointRef, str] | None:
    """The job's best checkpoint, once both it and the job's final checkpoint are known.

    The final CheckpointReady names the best; the two events travel under different record
    keys, so either may arrive first: whichever completes the pair queues the evaluation.
    """
    if announced.is_final:
        final: CheckpointRef | None = announced
    else:
        final = repository.final_checkpoint_of(announced.training_job)
    if final is None:
        return None
    wanted = best_at_end(final)
    if wanted == announced.name:
        chosen: CheckpointRef | None = announced
    elif announced.is_final:
        chosen = repository.checkpoint(wanted)
    else:
        chosen = None  # not the best of its job
    if chosen is None:
        return None
    return chosen, best_at_end_reason(chosen, final)


def on_split_created(session: Session, location: SplitLocation) -> None:
    """Remember where a split's manifest and rows are (evaluation sets name splits)."""
    EvaluatorRepository(session).record_split(location)


def on_dataset_versioned(session: Session, location: DatasetVersionLocation) -> None:
    """Remember where a dataset version's rows are (golden sets may name a whole version)."""
    EvaluatorRepository(session).record_dataset_version(location)
