"""What workers report, recorded: started, progress, checkpoints, finished, failed; each
stages its event (TrainingJobStarted, CheckpointReady, TrainingJobCompleted, TrainingJobFailed)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy.orm import Session

from services.trainer.adapters import protos_events
from services.trainer.adapters.repository import (
    TrainerRepository,
    checkpoint_from_row,
    dumps,
    job_cost,
    job_from_row,
    utc,
)
from services.trainer.adapters.tables import CheckpointRow
from services.trainer.domain.jobs import (
    FailureReason,
    JobState,
    LossPoint,
    Progress,
    StopReason,
    checkpoint_name,
)
from services.trainer.domain.training_rules import KeptCheckpoint, checkpoints_to_delete
from services.trainer.domain.worker_messages import (
    WorkerCheckpoint,
    WorkerFinished,
    WorkerProgress,
    WorkerStarted,
)
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.job_rows import (
    close_attempt,
    progress_of,
    set_progress,
    stage_failed,
    utc_now,
)
from shared.events import stage_event
from shared.local_paths import without_local_paths


def record_started(session: Session, deps: TrainerDeps, name: str, message: WorkerStarted) -> None:
    """The worker loaded everything: store the device-resolved hyperparameters; on the first
    start, stage TrainingJobStarted."""
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None:
        return
    now = utc_now()
    job = job_from_row(row, deps.pricing)
    repo.update_spec(row, replace(job.config, hyperparameters=message.hyperparameters))
    row.total_steps = message.total_steps
    row.device = message.device
    row.device_type = message.device_type
    row.attempt_tokens_start = message.tokens_seen
    row.blocked_reason, row.blocked_until = "", None  # training again
    progress = progress_of(row)
    set_progress(
        row,
        replace(
            progress,
            step=message.step,
            total_steps=message.total_steps,
            tokens_seen=message.tokens_seen,
            update_time=now,
            skipped_rows=message.skipped_rows,
        ),
    )
    row.update_time = now
    if row.start_time is None:
        row.start_time = now
        job = job_from_row(row, deps.pricing)
        stage_event(
            session,
            protos_events.training_job_started_event(
                job, total_steps=message.total_steps, device=message.device, now=now
            ),
            source=deps.source,
            subject=name,
        )


def record_progress(session: Session, name: str, message: WorkerProgress) -> None:
    """A progress snapshot; a loss-curve point when the worker marked one."""
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None:
        return
    now = utc_now()
    progress = progress_of(row)
    best = progress.best_validation_loss
    if message.validation_loss is not None and (best is None or message.validation_loss < best):
        best = message.validation_loss
    set_progress(
        row,
        Progress(
            step=message.step,
            total_steps=message.total_steps,
            epoch=message.epoch,
            train_loss=message.train_loss,
            validation_loss=(
                message.validation_loss
                if message.validation_loss is not None
                else progress.validation_loss
            ),
            best_validation_loss=best,
            learning_rate=message.learning_rate,
            tokens_per_second=message.tokens_per_second,
            tokens_seen=message.tokens_seen,
            eta_seconds=message.eta_seconds,
            elapsed_seconds=message.elapsed_seconds,
            update_time=now,
            skipped_rows=progress.skipped_rows,
        ),
    )
    row.training_seconds_done = message.elapsed_seconds
    row.update_time = now
    if message.log_point or message.validation_loss is not None:
        repo.put_loss_point(
            name,
            LossPoint(
                step=message.step,
                epoch=message.epoch,
                train_loss=message.interval_train_loss if message.log_point else None,
                validation_loss=message.validation_loss,
            ),
        )


@dataclass(frozen=True)
class CheckpointOutcome:
    """What recording a checkpoint decided; artifacts to delete once committed."""

    recorded: bool
    delete_uris: list[str]


def record_checkpoint(
    session: Session,
    deps: TrainerDeps,
    name: str,
    message: WorkerCheckpoint,
    *,
    keep_best_k: int,
) -> CheckpointOutcome:
    """A checkpoint is in the artifact store: record it once per (job, step), mark the best,
    apply retention, and stage CheckpointReady. A step already recorded (a resumed run
    redoing it) is not announced again.

    The final checkpoint says why training stopped (``stop_reason``); the job keeps the reason,
    so the checkpoint's resource shows it too. A CANCELLED one is partly trained: CheckpointReady
    says so, and the registry never promotes it automatically."""
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None:
        return CheckpointOutcome(False, [message.state_uri])
    now = utc_now()
    if message.is_final and message.stop_reason is not None:
        row.stop_reason = message.stop_reason.value
    old_state = row.latest_state_uri
    row.latest_state_uri = message.state_uri
    row.training_seconds_done = message.elapsed_seconds
    deletions = [old_state] if old_state and old_state != message.state_uri else []
    if repo.checkpoint_at(name, message.step) is not None:
        row.update_time = now
        return CheckpointOutcome(False, deletions)
    previous = repo.checkpoint_rows(name)
    best_so_far = min(
        (c.validation_loss for c in previous if c.validation_loss is not None), default=None
    )
    is_best = message.validation_loss is not None and (
        best_so_far is None or message.validation_loss < best_so_far
    )
    progress = progress_of(row)
    set_progress(row, replace(progress, tokens_seen=message.tokens_seen))
    cost = job_cost(row, deps.pricing, now=now)
    checkpoint = CheckpointRow(
        name=checkpoint_name(name, message.step),
        job=name,
        step=message.step,
        epoch=message.epoch,
        train_loss=message.train_loss,
        validation_loss=message.validation_loss,
        tokens_seen=message.tokens_seen,
        artifact_uri=message.artifact_uri,
        state_uri=message.state_uri,
        sha256=message.sha256,
        size_bytes=message.size_bytes,
        is_best=is_best,
        is_final=message.is_final,
        cost_json=dumps(cost),
        tokenizer_fingerprint_json=(
            dumps(message.tokenizer_fingerprint.to_json()) if message.tokenizer_fingerprint else ""
        ),
        create_time=now,
    )
    session.add(checkpoint)
    session.flush()  # the unique (job, step) constraint is the last guard against a repeat
    kept = [c for c in [*previous, checkpoint] if not c.artifact_deleted]
    doomed = set(
        checkpoints_to_delete(
            [KeptCheckpoint(c.step, c.validation_loss, c.is_final) for c in kept], keep_best_k
        )
    )
    for candidate in kept:
        if candidate.step in doomed:
            candidate.artifact_deleted = True
            deletions.append(candidate.artifact_uri)
    survivors = [c for c in kept if c.step not in doomed]
    validated = [c for c in survivors if c.validation_loss is not None]
    best_row = min(validated, key=lambda c: (c.validation_loss, -c.step)) if validated else None
    row.best_checkpoint = best_row.name if best_row else ""
    row.latest_checkpoint = checkpoint.name
    row.disk_full_count = 0  # a checkpoint was written: the disk has room again
    row.update_time = now
    job = job_from_row(row, deps.pricing)
    record = checkpoint_from_row(checkpoint, job)
    stage_event(
        session,
        protos_events.checkpoint_ready_event(record, job, now=now),
        source=deps.source,
        subject=record.name,
    )
    return CheckpointOutcome(True, deletions)


def record_finished(
    session: Session, deps: TrainerDeps, name: str, message: WorkerFinished
) -> JobState | None:
    """The worker ended training: SUCCEEDED (stage TrainingJobCompleted) or CANCELLED."""
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None or JobState(row.state).terminal:
        return None
    now = utc_now()
    progress = progress_of(row)
    set_progress(
        row,
        replace(
            progress,
            step=message.step,
            epoch=message.epoch,
            tokens_seen=message.tokens_seen,
            elapsed_seconds=message.elapsed_seconds,
            eta_seconds=None,
            update_time=now,
        ),
    )
    close_attempt(row, now)
    row.training_seconds_done = message.elapsed_seconds
    row.end_time = now
    row.update_time = now
    if message.cancelled:
        row.state = JobState.CANCELLED.value
        row.stop_reason = StopReason.CANCELLED.value
        return JobState.CANCELLED
    row.state = JobState.SUCCEEDED.value
    row.stop_reason = (message.stop_reason or StopReason.MAX_STEPS).value
    job = job_from_row(row, deps.pricing)
    kept = [c for c in repo.checkpoint_rows(name) if not c.artifact_deleted]
    validated = [c.validation_loss for c in kept if c.validation_loss is not None]
    tokens_per_second = (
        job.cost.tokens_processed / message.elapsed_seconds if message.elapsed_seconds > 0 else 0.0
    )
    started = utc(row.start_time) or now
    completed = protos_events.training_job_completed_event(
        job,
        checkpoints=[c.name for c in kept],
        steps_completed=message.step,
        epochs_completed=message.epoch,
        final_train_loss=message.final_train_loss,
        loss_points=repo.loss_points(name),
        tokens_per_second=tokens_per_second,
        best_validation_loss=min(validated) if validated else None,
        duration_seconds=(now - started).total_seconds(),
        now=now,
    )
    stage_event(session, completed, source=deps.source, subject=name)
    return JobState.SUCCEEDED


def record_failed(
    session: Session, deps: TrainerDeps, name: str, reason: FailureReason, message: str
) -> bool:
    """The job failed for ``reason``: FAILED, stage TrainingJobFailed. False if already over.

    The message is for API clients: local paths quoted from torch, transformers or the OS are
    cut to their last component."""
    row = TrainerRepository(session).job_row(name)
    if row is None or JobState(row.state).terminal:
        return False
    now = utc_now()
    close_attempt(row, now)
    row.state = JobState.FAILED.value
    row.stop_reason = StopReason.FAILED.value
    row.failure_reason = reason.value
    row.failure_message = without_local_paths(message)[:10_000]
    row.end_time = now
    row.update_time = now
    stage_failed(session, deps, row, now=now)
    return True
