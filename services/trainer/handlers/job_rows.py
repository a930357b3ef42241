"""What several handler modules do to a stored job: read the clock, read and write its progress,
close a worker's attempt, stage TrainingJobFailed."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from services.trainer.adapters import protos_events
from services.trainer.adapters.repository import dumps, job_from_row, utc
from services.trainer.adapters.tables import JobRow
from services.trainer.domain.jobs import Progress
from services.trainer.domain.jsonable import from_jsonable
from services.trainer.domain.launch import devices_in
from services.trainer.handlers.deps import TrainerDeps
from shared.events import stage_event


def utc_now() -> datetime:
    return datetime.now(UTC)


def progress_of(row: JobRow) -> Progress:
    return from_jsonable(Progress, json.loads(row.progress_json or "{}"))


def set_progress(row: JobRow, progress: Progress) -> None:
    row.progress_json = dumps(progress)


def close_attempt(row: JobRow, now: datetime) -> None:
    """Add the finished attempt's device time and tokens to the job's totals."""
    started = utc(row.attempt_started_at)
    if started is not None:
        # every device of the slot was held for the attempt's time
        elapsed = max(0.0, (now - started).total_seconds())
        row.device_seconds_done += elapsed * devices_in(row.device)
        row.tokens_processed_done += max(0, progress_of(row).tokens_seen - row.attempt_tokens_start)
    row.attempt_started_at = None
    row.worker_pid = None


def stage_failed(session: Session, deps: TrainerDeps, row: JobRow, *, now: datetime) -> None:
    job = job_from_row(row, deps.pricing)
    stage_event(
        session,
        protos_events.training_job_failed_event(job, now=now),
        source=deps.source,
        subject=job.name,
    )
