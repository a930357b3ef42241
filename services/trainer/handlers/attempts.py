"""The supervisor's bookkeeping of worker attempts: which jobs wait for a device, a worker
started, a worker lost or out of disk or memory, a cancel with no worker to tell."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from services.trainer.adapters.repository import TrainerRepository, utc
from services.trainer.adapters.tables import JobRow
from services.trainer.domain.jobs import (
    FailureReason,
    JobState,
    StopReason,
    can_transition,
    disk_full_wait,
)
from services.trainer.domain.worker_messages import WorkerOomRetry
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.job_rows import close_attempt, progress_of, utc_now
from services.trainer.handlers.worker_reports import record_failed
from shared.local_paths import without_local_paths


def runnable_jobs(session: Session, now: datetime | None = None) -> list[str]:
    """Jobs waiting for a device, in the order they get one: interrupted RUNNING jobs
    (resumes) first, then QUEUED jobs oldest first. A job waiting out a full disk
    (``blocked_until``) is left out until then, unless it was cancelled meanwhile."""
    now = now or utc_now()
    rows = TrainerRepository(session).job_rows_in([JobState.RUNNING, JobState.QUEUED])
    running = [r.name for r in rows if r.state == JobState.RUNNING.value and not _blocked(r, now)]
    queued = [r.name for r in rows if r.state == JobState.QUEUED.value]
    return running + queued


def _blocked(row: JobRow, now: datetime) -> bool:
    """Whether the job waits out a full disk at ``now`` (a cancelled one waits for nothing)."""
    until = utc(row.blocked_until)
    return until is not None and until > now and not row.cancel_requested


def begin_attempt(session: Session, name: str, *, device: str, pid: int | None) -> JobRow | None:
    """A worker was started for ``name`` on ``device``: QUEUED → RUNNING, one more attempt.
    Returns None when the job cannot run (it was cancelled meanwhile)."""
    row = TrainerRepository(session).job_row(name)
    if row is None:
        return None
    state = JobState(row.state)
    if state is not JobState.RUNNING and not can_transition(state, JobState.RUNNING):
        return None
    now = utc_now()
    row.state = JobState.RUNNING.value
    row.attempt_count += 1
    row.device = device
    row.worker_pid = pid
    row.attempt_started_at = now
    row.attempt_tokens_start = progress_of(row).tokens_seen
    row.update_time = now
    return row


def record_oom_retry(session: Session, name: str, message: WorkerOomRetry) -> None:
    """The worker retries after running out of memory: one more attempt, a smaller micro-batch."""
    row = TrainerRepository(session).job_row(name)
    if row is None:
        return
    row.attempt_count += 1
    row.oom_retries += 1
    row.micro_batch_size = message.micro_batch_size
    row.accumulation_steps = message.accumulation_steps
    row.update_time = utc_now()


def record_worker_lost(
    session: Session,
    deps: TrainerDeps,
    name: str,
    *,
    crashed: bool,
    max_restarts: int,
    ended_at: datetime | None = None,
) -> JobState | None:
    """The worker exited without finishing: the service halted it (``crashed=False``) or it
    died. A cancelled job becomes CANCELLED; a crash beyond ``max_restarts`` fails the job
    with WORKER_CRASHED; otherwise the job stays RUNNING and resumes from its last checkpoint.
    Returns the new terminal state, if any."""
    row = TrainerRepository(session).job_row(name)
    if row is None or JobState(row.state).terminal:
        return None
    now = utc_now()
    close_attempt(row, now)
    row.update_time = now
    if row.cancel_requested:
        row.state = JobState.CANCELLED.value
        row.stop_reason = StopReason.CANCELLED.value
        row.end_time = now
        return JobState.CANCELLED
    if crashed:
        row.crash_count += 1
        if row.crash_count > max_restarts:
            record_failed(
                session,
                deps,
                name,
                FailureReason.WORKER_CRASHED,
                f"the worker process died {row.crash_count} times (resume limit {max_restarts})",
            )
            return JobState.FAILED
    return None


def record_disk_full(
    session: Session, name: str, message: str, *, now: datetime | None = None
) -> JobState | None:
    """The worker's attempt ended on a full disk (it wrote nothing half-done). The job stays
    RUNNING and resumes from its last complete checkpoint after :func:`disk_full_wait` (it says
    so in ``status_message``); a cancelled one becomes CANCELLED. Returns the new terminal
    state, if any."""
    row = TrainerRepository(session).job_row(name)
    if row is None or JobState(row.state).terminal:
        return None
    now = now or utc_now()
    close_attempt(row, now)
    row.update_time = now
    if row.cancel_requested:
        row.state = JobState.CANCELLED.value
        row.stop_reason = StopReason.CANCELLED.value
        row.end_time = now
        row.blocked_reason, row.blocked_until = "", None
        return JobState.CANCELLED
    row.disk_full_count += 1
    resume_at = now + disk_full_wait(row.disk_full_count)
    last = f"its last complete checkpoint, {row.latest_checkpoint}" if row.latest_checkpoint else ""
    row.blocked_reason = (
        f"{without_local_paths(message)[:2000]} (attempt {row.attempt_count}); resuming "
        f"from {last or 'the start'} at {resume_at.isoformat(timespec='seconds')}: free space "
        "on the trainer's artifact store"
    )
    row.blocked_until = resume_at
    return None


def cancel_without_worker(session: Session, name: str) -> bool:
    """A running job with no worker (between a crash and its resume) was cancelled."""
    row = TrainerRepository(session).job_row(name)
    if row is None or row.state != JobState.RUNNING.value or not row.cancel_requested:
        return False
    now = utc_now()
    close_attempt(row, now)
    row.state = JobState.CANCELLED.value
    row.stop_reason = StopReason.CANCELLED.value
    row.end_time = now
    row.update_time = now
    return True
