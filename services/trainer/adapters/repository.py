"""The trainer's SQL repository: rows in, domain objects out, inside the caller's session.

Handlers own the transaction (a state change and the events it stages commit together); the
repository only reads and writes rows in the session it is given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import false, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from services.trainer.adapters.tables import (
    CheckpointRow,
    DatasetAuditRow,
    JobRow,
    KnownSplitRow,
    LossPointRow,
    PolicyRequestRow,
    PolicyRow,
)
from services.trainer.domain.config import JobConfig
from services.trainer.domain.costs import Budget, Cost, compute_cost
from services.trainer.domain.estimates import ThroughputSample, TrainingEstimate
from services.trainer.domain.jobs import (
    CheckpointRecord,
    DatasetAuditInfo,
    FailureReason,
    JobState,
    LossPoint,
    Progress,
    SplitInfo,
    StopReason,
    TrainingJob,
    TrainingPolicy,
)
from services.trainer.domain.jsonable import from_jsonable, jsonable
from services.trainer.domain.launch import devices_in
from shared.modeling.tokenizer_fingerprint import TokenizerFingerprintRecord
from shared.ownership import Owner
from shared.running_claims import advisory_lock_key
from shared.task_types import TaskType

#: Namespace of the advisory locks that serialise admission per budget holder.
_ADMISSION_LOCKS = "trainer-budget-admission"


def utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every stored time is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def dumps(value: Any) -> str:
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Pricing:
    """The configured price of a device-hour."""

    price_per_device_hour: Decimal
    currency: str


def job_cost(row: JobRow, pricing: Pricing, *, now: datetime | None = None) -> Cost:
    """Device time and tokens of finished attempts, plus the running attempt's so far."""
    seconds = row.device_seconds_done
    started = utc(row.attempt_started_at)
    if started is not None:
        elapsed = max(0.0, ((now or datetime.now(UTC)) - started).total_seconds())
        seconds += elapsed * devices_in(row.device)
    progress = json.loads(row.progress_json or "{}")
    tokens = row.tokens_processed_done
    if started is not None:
        tokens += max(0, int(progress.get("tokens_seen", 0)) - row.attempt_tokens_start)
    return compute_cost(
        device_seconds=seconds,
        tokens_processed=tokens,
        price_per_device_hour=pricing.price_per_device_hour,
        currency=pricing.currency,
        device_type=row.device_type or row.device,
        device_count=devices_in(row.device),
    )


def job_from_row(row: JobRow, pricing: Pricing) -> TrainingJob:
    spec = json.loads(row.spec_json)
    progress = from_jsonable(Progress, json.loads(row.progress_json or "{}"))
    return TrainingJob(
        name=row.name,
        target_model=row.target_model,
        task_type=TaskType(row.task_type),
        split=from_jsonable(SplitInfo, spec["split"]),
        config=from_jsonable(JobConfig, spec["config"]),
        state=JobState(row.state),
        total_steps=row.total_steps,
        failure_reason=FailureReason(row.failure_reason) if row.failure_reason else None,
        failure_message=row.failure_message,
        stop_reason=StopReason(row.stop_reason) if row.stop_reason else None,
        progress=progress,
        cost=job_cost(row, pricing),
        best_checkpoint=row.best_checkpoint,
        latest_checkpoint=row.latest_checkpoint,
        training_policy=row.training_policy,
        creator=row.creator,
        software_versions=spec.get("software_versions", {}),
        attempt_count=row.attempt_count,
        device=row.device,
        create_time=utc(row.create_time),
        start_time=utc(row.start_time),
        end_time=utc(row.end_time),
        update_time=utc(row.update_time),
        request_id=row.request_id or "",
        cancel_requested=row.cancel_requested,
        cancel_reason=row.cancel_reason,
        micro_batch_size=row.micro_batch_size,
        accumulation_steps=row.accumulation_steps,
        oom_retries=row.oom_retries,
        crash_count=row.crash_count,
        status_message=row.blocked_reason,
        resume_time=utc(row.blocked_until),
        budget=from_jsonable(Budget, spec.get("budget") or {}),
        estimate=(
            from_jsonable(TrainingEstimate, spec["estimate"]) if spec.get("estimate") else None
        ),
    )


def checkpoint_from_row(row: CheckpointRow, job: TrainingJob) -> CheckpointRecord:
    """The checkpoint ``row`` of ``job``; the final one carries the job's stop reason (recorded
    with it, see ``handlers.worker_reports.record_checkpoint``)."""
    return CheckpointRecord(
        name=row.name,
        training_job=row.job,
        target_model=job.target_model,
        step=row.step,
        epoch=row.epoch,
        train_loss=row.train_loss,
        validation_loss=row.validation_loss,
        tokens_seen=row.tokens_seen,
        artifact_uri=row.artifact_uri,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        is_best=row.is_best,
        is_final=row.is_final,
        cost=from_jsonable(Cost, json.loads(row.cost_json)),
        create_time=utc(row.create_time) or datetime.now(UTC),
        artifact_deleted=row.artifact_deleted,
        stop_reason=job.stop_reason if row.is_final else None,
        tokenizer_fingerprint=(
            TokenizerFingerprintRecord.from_json(json.loads(row.tokenizer_fingerprint_json))
            if row.tokenizer_fingerprint_json
            else None
        ),
    )


def policy_from_row(row: PolicyRow) -> TrainingPolicy:
    return TrainingPolicy(
        name=row.name,
        dataset=row.dataset,
        target_model=row.target_model,
        template=from_jsonable(JobConfig, json.loads(row.template_json)),
        disabled=row.disabled,
        create_time=utc(row.create_time),
        update_time=utc(row.update_time),
        owner=from_jsonable(Owner, json.loads(row.owner_json or "{}")),
        budget=from_jsonable(Budget, json.loads(row.budget_json or "{}")),
        model_budget=from_jsonable(Budget, json.loads(row.model_budget_json or "{}")),
    )


class TrainerRepository:
    """Queries and writes of the trainer's tables in one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- jobs ---------------------------------------------------------------------------------

    def job_row(self, name: str) -> JobRow | None:
        return self.session.get(JobRow, name)

    def newest_job_change(self) -> tuple[int, datetime | None]:
        """A value that differs after any job is created or updated: how many jobs there are
        and the newest ``update_time`` (one small aggregate for every watcher)."""
        count, newest = self.session.execute(
            select(func.count(), func.max(JobRow.update_time)).select_from(JobRow)
        ).one()
        return int(count), newest

    def job_row_by_request_id(self, request_id: str) -> JobRow | None:
        return self.session.scalars(select(JobRow).where(JobRow.request_id == request_id)).first()

    def add_job(self, job: TrainingJob, *, now: datetime) -> JobRow:
        row = JobRow(
            name=job.name,
            request_id=job.request_id or None,
            target_model=job.target_model,
            split=job.split.name,
            training_policy=job.training_policy,
            creator=job.creator,
            task_type=job.task_type.value,
            spec_json=dumps(
                {
                    "config": job.config,
                    "split": job.split,
                    "software_versions": dict(job.software_versions),
                    "budget": job.budget,
                    "estimate": job.estimate,
                }
            ),
            state=job.state.value,
            total_steps=job.total_steps,
            failure_reason=job.failure_reason.value if job.failure_reason else None,
            failure_message=job.failure_message,
            progress_json=dumps(job.progress),
            micro_batch_size=job.micro_batch_size,
            accumulation_steps=job.accumulation_steps,
            attempt_count=0,
            crash_count=0,
            oom_retries=0,
            cancel_requested=False,
            cancel_reason="",
            best_checkpoint="",
            latest_checkpoint="",
            latest_state_uri="",
            device="",
            device_type="",
            device_seconds_done=0.0,
            tokens_processed_done=0,
            attempt_tokens_start=0,
            training_seconds_done=0.0,
            create_time=now,
            update_time=now,
            end_time=now if job.state.terminal else None,
        )
        self.session.add(row)
        return row

    def update_spec(self, row: JobRow, config: JobConfig) -> None:
        """Replace the stored configuration (device-dependent defaults resolved at start)."""
        spec = json.loads(row.spec_json)
        spec["config"] = jsonable(config)
        row.spec_json = json.dumps(spec, sort_keys=True, separators=(",", ":"))

    def list_job_rows(
        self,
        *,
        target_model: str = "",
        state: JobState | None = None,
        split: str = "",
        after: Sequence[Any] | None = None,
        limit: int,
    ) -> list[JobRow]:
        """Newest first, keyset-paged on (create_time, name) descending."""
        query = select(JobRow)
        if target_model:
            query = query.where(JobRow.target_model == target_model)
        if state is not None:
            query = query.where(JobRow.state == state.value)
        if split:
            query = query.where(JobRow.split == split)
        if after is not None:
            created = datetime.fromisoformat(str(after[0]))
            query = query.where(
                or_(
                    JobRow.create_time < created,
                    (JobRow.create_time == created) & (JobRow.name < str(after[1])),
                )
            )
        query = query.order_by(JobRow.create_time.desc(), JobRow.name.desc()).limit(limit)
        return list(self.session.scalars(query))

    def job_rows_in(self, states: Sequence[JobState]) -> list[JobRow]:
        """Jobs in ``states``, oldest first (the queue order)."""
        query = (
            select(JobRow)
            .where(JobRow.state.in_([s.value for s in states]))
            .order_by(JobRow.create_time, JobRow.name)
        )
        return list(self.session.scalars(query))

    def serialise_admission(self, holders: Sequence[str]) -> None:
        """Until this transaction ends, be the only one admitting jobs against ``holders``'
        budgets, so that two requests cannot both read a month's spend, both fit, and both be
        admitted. PostgreSQL: a transaction-scoped advisory lock per holder, taken in name
        order so that two admissions never wait on each other. SQLite has one writer at a
        time but reads outside it, so the transaction takes the write lock now, with a write
        that changes nothing: the spend it reads next cannot change before it commits."""
        if self.session.get_bind().dialect.name == "postgresql":
            for holder in sorted(set(holders)):
                key = advisory_lock_key(_ADMISSION_LOCKS, holder)
                self.session.execute(select(func.pg_advisory_xact_lock(key)))
            return
        self.session.execute(
            update(JobRow)
            .where(false())
            .values(name=JobRow.name)
            .execution_options(synchronize_session=False)
        )

    def committed_spend(
        self,
        *,
        since: datetime,
        pricing: Pricing,
        target_model: str = "",
        training_policy: str = "",
    ) -> Decimal:
        """What the jobs created since ``since`` for ``target_model`` (or by
        ``training_policy``) cost so far, plus what the unfinished ones are still expected to
        cost (their estimate beyond their cost so far): spend a monthly budget must cover."""
        query = select(JobRow).where(JobRow.create_time >= since)
        if target_model:
            query = query.where(JobRow.target_model == target_model)
        if training_policy:
            query = query.where(JobRow.training_policy == training_policy)
        total = Decimal(0)
        for row in self.session.scalars(query):
            job = job_from_row(row, pricing)
            spent = job.cost.amount
            if not job.state.terminal and job.estimate is not None:
                spent = max(spent, job.estimate.cost.amount)
            total += spent
        return total

    def throughput_samples(self, base_model_sha256: str) -> list[ThroughputSample]:
        """What every SUCCEEDED run of the base model (its files' SHA-256) processed, in how
        many attempts, and on which device type, oldest first. Its validation tokens: the
        validations its loss curve records, times its split's validation rows, times the mean
        tokens per train row its estimate counted (0 when it was not estimated)."""
        query = (
            select(JobRow)
            .where(JobRow.state == JobState.SUCCEEDED.value)
            .order_by(JobRow.end_time, JobRow.name)
        )
        runs: list[tuple[JobRow, dict[str, Any]]] = []
        for row in self.session.scalars(query):
            spec = json.loads(row.spec_json)
            if spec["config"]["base_model"].get("files_sha256") == base_model_sha256:
                runs.append((row, spec))
        counted = self.session.execute(
            select(LossPointRow.job, func.count())
            .where(
                LossPointRow.job.in_([row.name for row, _ in runs]),
                LossPointRow.validation_loss.is_not(None),
            )
            .group_by(LossPointRow.job)
        )
        validations = {job: count for job, count in counted}
        samples = []
        for row, spec in runs:
            estimate = spec.get("estimate") or {}
            per_row = (
                estimate["train_tokens"] / estimate["train_examples"]
                if estimate.get("train_examples")
                else 0.0
            )
            validation_rows = spec["split"].get("validation_rows", 0)
            samples.append(
                ThroughputSample(
                    tokens_processed=row.tokens_processed_done,
                    device_seconds=row.device_seconds_done,
                    training_seconds=row.training_seconds_done,
                    device_type=row.device_type or row.device,
                    validation_tokens=round(
                        per_row * validation_rows * validations.get(row.name, 0)
                    ),
                    attempts=max(1, row.attempt_count - row.oom_retries),
                )
            )
        return samples

    def finished_runs_by_model(self) -> list[tuple[str, int, float]]:
        """Per target model: its terminal jobs and their device-seconds, summed."""
        terminal = [s.value for s in JobState if s.terminal]
        rows = self.session.execute(
            select(JobRow.target_model, func.count(), func.sum(JobRow.device_seconds_done))
            .where(JobRow.state.in_(terminal))
            .group_by(JobRow.target_model)
        )
        return [(model, count, float(seconds or 0.0)) for model, count, seconds in rows]

    def count_by_state(self) -> dict[str, int]:
        rows = self.session.execute(select(JobRow.state, func.count()).group_by(JobRow.state))
        return {state: count for state, count in rows}

    # -- loss curve -----------------------------------------------------------------------------

    def put_loss_point(self, job: str, point: LossPoint) -> None:
        """Add or complete the point at ``point.step`` (train and validation losses merge)."""
        row = self.session.scalars(
            select(LossPointRow).where(LossPointRow.job == job, LossPointRow.step == point.step)
        ).first()
        if row is None:
            self.session.add(
                LossPointRow(
                    job=job,
                    step=point.step,
                    epoch=point.epoch,
                    train_loss=point.train_loss,
                    validation_loss=point.validation_loss,
                )
            )
            return
        row.epoch = point.epoch
        if point.train_loss is not None:
            row.train_loss = point.train_loss
        if point.validation_loss is not None:
            row.validation_loss = point.validation_loss

    def loss_points(self, job: str) -> list[LossPoint]:
        rows = self.session.scalars(
            select(LossPointRow).where(LossPointRow.job == job).order_by(LossPointRow.step)
        )
        return [LossPoint(r.step, r.epoch, r.train_loss, r.validation_loss) for r in rows]

    # -- checkpoints ------------------------------------------------------------------------------

    def checkpoint_row(self, name: str) -> CheckpointRow | None:
        return self.session.get(CheckpointRow, name)

    def checkpoint_at(self, job: str, step: int) -> CheckpointRow | None:
        return self.session.scalars(
            select(CheckpointRow).where(CheckpointRow.job == job, CheckpointRow.step == step)
        ).first()

    def checkpoint_rows(self, job: str) -> list[CheckpointRow]:
        return list(
            self.session.scalars(
                select(CheckpointRow).where(CheckpointRow.job == job).order_by(CheckpointRow.step)
            )
        )

    def list_checkpoint_rows(
        self, *, job: str | None, after: Sequence[Any] | None, limit: int
    ) -> list[CheckpointRow]:
        """Kept checkpoints ascending by (job, step); ``job=None`` lists every job's."""
        query = select(CheckpointRow).where(CheckpointRow.artifact_deleted.is_(False))
        if job is not None:
            query = query.where(CheckpointRow.job == job)
        if after is not None:
            query = query.where(
                tuple_(CheckpointRow.job, CheckpointRow.step) > (str(after[0]), int(after[1]))
            )
        query = query.order_by(CheckpointRow.job, CheckpointRow.step).limit(limit)
        return list(self.session.scalars(query))

    # -- policies ---------------------------------------------------------------------------------

    def policy_row(self, name: str) -> PolicyRow | None:
        return self.session.get(PolicyRow, name)

    def policy_request(self, request_id: str) -> PolicyRequestRow | None:
        return self.session.get(PolicyRequestRow, request_id)

    def record_policy_request(self, request_id: str, policy: str, now: datetime) -> None:
        self.session.add(PolicyRequestRow(request_id=request_id, policy=policy, create_time=now))

    def list_policy_rows(
        self, *, dataset: str = "", after: str | None = None, limit: int
    ) -> list[PolicyRow]:
        query = select(PolicyRow)
        if dataset:
            query = query.where(PolicyRow.dataset == dataset)
        if after is not None:
            query = query.where(PolicyRow.name > after)
        return list(self.session.scalars(query.order_by(PolicyRow.name).limit(limit)))

    def enabled_policies_for(self, dataset: str) -> list[TrainingPolicy]:
        rows = self.session.scalars(
            select(PolicyRow)
            .where(PolicyRow.dataset == dataset, PolicyRow.disabled.is_(False))
            .order_by(PolicyRow.name)
        )
        return [policy_from_row(r) for r in rows]

    # -- splits -----------------------------------------------------------------------------------

    def known_split(self, name: str) -> SplitInfo | None:
        row = self.session.get(KnownSplitRow, name)
        return None if row is None else from_jsonable(SplitInfo, json.loads(row.info_json))

    def known_splits_of_version(self, dataset: str, dataset_version: str) -> list[SplitInfo]:
        rows = self.session.scalars(
            select(KnownSplitRow)
            .where(KnownSplitRow.dataset == dataset)
            .order_by(KnownSplitRow.name)
        )
        splits = [from_jsonable(SplitInfo, json.loads(row.info_json)) for row in rows]
        return [split for split in splits if split.dataset_version == dataset_version]

    # -- dataset audits ---------------------------------------------------------------------------

    def dataset_audit(self, dataset_version: str) -> DatasetAuditInfo | None:
        row = self.session.get(DatasetAuditRow, dataset_version)
        return None if row is None else from_jsonable(DatasetAuditInfo, json.loads(row.info_json))

    def remember_dataset_audit(self, audit: DatasetAuditInfo, *, now: datetime) -> bool:
        """Keep the audit; ``False`` when it was already known (a redelivered event)."""
        if self.session.get(DatasetAuditRow, audit.dataset_version) is not None:
            return False
        self.session.add(
            DatasetAuditRow(
                dataset_version=audit.dataset_version, info_json=dumps(audit), create_time=now
            )
        )
        self.session.flush()
        return True

    def remember_split(self, split: SplitInfo, *, now: datetime) -> None:
        if self.session.get(KnownSplitRow, split.name) is None:
            self.session.add(
                KnownSplitRow(
                    name=split.name, dataset=split.dataset, info_json=dumps(split), create_time=now
                )
            )
