"""The read side: Get and List of training jobs, checkpoints and training policies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy.orm import Session

from services.trainer.adapters.repository import (
    TrainerRepository,
    checkpoint_from_row,
    job_from_row,
    policy_from_row,
    utc,
)
from services.trainer.domain.jobs import (
    JOB_PREFIX,
    CheckpointRecord,
    JobState,
    LossPoint,
    TrainingJob,
    TrainingPolicy,
)
from services.trainer.handlers.deps import TrainerDeps
from shared import names
from shared.errors import NotFound
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size


def get_training_job(
    session: Session, deps: TrainerDeps, name: str
) -> tuple[TrainingJob, list[LossPoint]]:
    """GetTrainingJob: the job and its loss curve."""
    repo = TrainerRepository(session)
    row = repo.job_row(name)
    if row is None:
        raise NotFound("TrainingJob", name)
    return job_from_row(row, deps.pricing), repo.loss_points(name)


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a List call."""

    items: list[T]
    next_page_token: str


def list_training_jobs(
    session: Session,
    deps: TrainerDeps,
    *,
    target_model: str,
    state: JobState | None,
    split: str,
    page_size: int,
    page_token: str,
) -> Page[tuple[TrainingJob, list[LossPoint]]]:
    """ListTrainingJobs: newest first, filtered, keyset-paged."""
    size = resolve_page_size(page_size)
    query = {"target_model": target_model, "state": state.value if state else "", "split": split}
    after = decode_page_token(page_token, query)
    repo = TrainerRepository(session)
    rows = repo.list_job_rows(
        target_model=target_model, state=state, split=split, after=after, limit=size + 1
    )
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        token = encode_page_token(query, [utc(last.create_time).isoformat(), last.name])  # type: ignore[union-attr]
    return Page([(job_from_row(r, deps.pricing), repo.loss_points(r.name)) for r in rows], token)


def get_checkpoint(
    session: Session, deps: TrainerDeps, name: str
) -> tuple[CheckpointRecord, TrainingJob]:
    """GetCheckpoint: the checkpoint and its job (for the lineage)."""
    repo = TrainerRepository(session)
    row = repo.checkpoint_row(name)
    if row is None or row.artifact_deleted:
        raise NotFound("Checkpoint", name)
    job_row = repo.job_row(row.job)
    if job_row is None:
        raise NotFound("TrainingJob", row.job)
    job = job_from_row(job_row, deps.pricing)
    return checkpoint_from_row(row, job), job


def list_checkpoints(
    session: Session, deps: TrainerDeps, *, parent: str, page_size: int, page_token: str
) -> Page[tuple[CheckpointRecord, TrainingJob]]:
    """ListCheckpoints: a job's kept checkpoints ascending by step (``trainingJobs/-``: all)."""
    names.ANY_TRAINING_JOB.check(parent, field="parent")
    size = resolve_page_size(page_size)
    query = {"parent": parent}
    after = decode_page_token(page_token, query)
    repo = TrainerRepository(session)
    job = None if parent == f"{JOB_PREFIX}-" else parent
    if job is not None and repo.job_row(job) is None:
        raise NotFound("TrainingJob", job)
    rows = repo.list_checkpoint_rows(job=job, after=after, limit=size + 1)
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = encode_page_token(query, [rows[-1].job, rows[-1].step])
    jobs: dict[str, TrainingJob] = {}
    items = []
    for row in rows:
        if row.job not in jobs:
            job_row = repo.job_row(row.job)
            assert job_row is not None
            jobs[row.job] = job_from_row(job_row, deps.pricing)
        items.append((checkpoint_from_row(row, jobs[row.job]), jobs[row.job]))
    return Page(items, token)


def get_training_policy(session: Session, name: str) -> TrainingPolicy:
    row = TrainerRepository(session).policy_row(name)
    if row is None:
        raise NotFound("TrainingPolicy", name)
    return policy_from_row(row)


def list_training_policies(
    session: Session, *, dataset: str, page_size: int, page_token: str
) -> Page[TrainingPolicy]:
    size = resolve_page_size(page_size)
    query = {"dataset": dataset}
    after = decode_page_token(page_token, query)
    rows = TrainerRepository(session).list_policy_rows(
        dataset=dataset, after=str(after[0]) if after else None, limit=size + 1
    )
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = encode_page_token(query, [rows[-1].name])
    return Page([policy_from_row(r) for r in rows], token)
