"""The job supervisor: runs queued jobs in worker processes and records what they report.

An entrypoint, like the gRPC servicer and the Kafka subscriptions: the messages of worker
processes drive handlers the way RPCs and events do. A background component of the trainer
service (``ServiceSpec.background``), on its own thread:

* **scheduling** — one job per device at a time; interrupted RUNNING jobs (the service or a
  worker died) resume first, from their last checkpoint; then QUEUED jobs, oldest first;
* **relaying** — every message a worker sends (started, progress, checkpoint, OOM retry,
  finished, failed) becomes a database transaction through a handler, with its event staged in
  the outbox; then the outbox relay and the watchers are woken;
* **cancelling** — a cancel request sends the worker ``cancel``; it writes a final checkpoint
  and stops within seconds, or is killed after the grace period;
* **budgets** — a job whose cost so far reaches its per-run budget is sent
  ``budget_exhausted``: it finishes its step, writes a final checkpoint and ends SUCCEEDED
  with stop reason BUDGET_EXHAUSTED (the supervisor prices device time, the worker does not);
* **full disks** — an attempt that runs out of disk space ends without a half-written
  checkpoint; the job stays RUNNING, says "disk full" in its status message, and resumes from
  its last complete checkpoint after a wait that doubles while the disk stays full;
* **crashes** — a worker that dies without a result is restarted from the last checkpoint, up
  to ``max_worker_restarts`` times, then the job fails with WORKER_CRASHED;
* **shutdown** — workers are halted: each writes a checkpoint of the steps it trained since
  its last one (within the halt wait; killed after it, losing only those steps), their jobs
  stay RUNNING and resume from that checkpoint when the service starts again;
* **nodes** — one trainer process runs per node, all on one database. A node runs a job only
  while it holds the job's claim (``shared.running_claims``: a PostgreSQL advisory lock on a
  session of its own), taken before the job is marked RUNNING and released when its worker
  ends, so each attempt runs on exactly one node. A node that dies loses its claims with its
  database session: its RUNNING jobs are then free for any node to resume from their last
  checkpoint, while those a live node runs are never touched. On SQLite (one node) claims are
  always granted and every RUNNING job found at start-up is this node's own.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import wait as wait_for_connections
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from services.trainer.adapters.metrics import TrainerMetrics
from services.trainer.adapters.models import ModelCatalog
from services.trainer.adapters.notifications import JobChanges
from services.trainer.adapters.repository import TrainerRepository, job_from_row, utc
from services.trainer.adapters.worker import (
    BUDGET_EXHAUSTED,
    CANCEL,
    HALT,
    ForkedWorkers,
    WorkerHandle,
    WorkerLauncher,
)
from services.trainer.domain.costs import budget_exhausted
from services.trainer.domain.jobs import FailureReason, JobState, TrainingJob
from services.trainer.domain.launch import KubernetesLaunch, Sharding, device_slots
from services.trainer.domain.worker_messages import (
    WorkerCheckpoint,
    WorkerDiskFull,
    WorkerFailed,
    WorkerFinished,
    WorkerMessage,
    WorkerOomRetry,
    WorkerPlan,
    WorkerProgress,
    WorkerStarted,
    decode_message,
)
from services.trainer.handlers.attempts import (
    begin_attempt,
    cancel_without_worker,
    record_disk_full,
    record_oom_retry,
    record_worker_lost,
    runnable_jobs,
)
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.worker_reports import (
    record_checkpoint,
    record_failed,
    record_finished,
    record_progress,
    record_started,
)
from shared.artifacts import ArtifactError, ArtifactStore
from shared.db import run_in_transaction
from shared.events import OutboxRelay
from shared.modeling import ModelingError, ModelRefused
from shared.running_claims import RunningClaims

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.25
#: The claims' namespace: a job's name is unique among the trainer's claims.
CLAIM_NAMESPACE = "training-jobs"
_HALT_WAIT_SECONDS = 10.0


@dataclass
class _Active:
    """A worker the supervisor is running for a job on a device."""

    job: str
    device: str
    handle: WorkerHandle
    cancel_sent_at: float | None = None
    budget_stop_sent: bool = False
    settled: bool = False
    last_step: int = 0
    last_tokens: int = 0
    started_at: float = 0.0


@dataclass(frozen=True)
class SupervisorConfig:
    """The settings the supervisor runs with."""

    devices: str
    cpu_threads: int
    max_worker_restarts: int
    cancel_grace_seconds: float
    fault_oom_above_batch: int
    fault_hold_after_step: int = 0
    #: Token budget of packed micro-batches (0: by examples); see ``WorkerPlan``.
    micro_batch_tokens: int = 0
    #: Compile decoder layers: True, False, or None (on CUDA only).
    compile_layers: bool | None = None
    #: Ranks per job (``torchrun`` processes, data-parallel); 1: one process per job.
    ranks_per_job: int = 1
    #: How those ranks hold the base model (whole, or its frozen weights sharded).
    sharding: Sharding = Sharding.DATA_PARALLEL
    #: Where jobs' ranks run: None on this node, else Kubernetes (see ``KubernetesLaunch``).
    kubernetes: KubernetesLaunch | None = None
    log_level: str = "INFO"
    #: Passed on to workers, which open the trainer's artifact store themselves.
    s3_endpoint_url: str | None = None


class JobSupervisor:
    """See module docstring. ``start``/``stop`` make it a runtime background component."""

    def __init__(
        self,
        *,
        artifacts: ArtifactStore,
        models: ModelCatalog,
        deps: TrainerDeps,
        changes: JobChanges,
        metrics: TrainerMetrics,
        relay: OutboxRelay,
        config: SupervisorConfig,
        claims: RunningClaims | None = None,
        workers: WorkerLauncher | None = None,
    ) -> None:
        self._artifacts = artifacts
        self._models = models
        self._deps = deps
        self._changes = changes
        self._metrics = metrics
        self._relay = relay
        self._config = config
        #: The jobs this node runs (see "nodes" in the module docstring).
        self._claims = claims or RunningClaims(None, CLAIM_NAMESPACE)
        self._workers = workers or ForkedWorkers()
        self._devices: list[str] = []
        self._active: dict[str, _Active] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trainer-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Halt workers (their jobs resume at the next start) and stop the thread."""
        self._stop.set()
        self._changes.supervisor_wake.set()
        if self._thread:
            self._thread.join(timeout)

    @property
    def devices(self) -> list[str]:
        return list(self._devices)

    def worker_pid(self, job: str) -> int | None:
        """The pid of the worker running ``job``, if one is (for operators and tests)."""
        with self._lock:
            active = next((a for a in self._active.values() if a.job == job), None)
            return active.handle.pid if active else None

    def _resolve_devices(self) -> bool:
        """Know the devices (asking a worker, for ``auto``, when the first job waits)."""
        if self._devices:
            return True
        configured = self._config.devices.strip()
        if configured and configured != "auto":
            self._devices = [d.strip() for d in configured.split(",") if d.strip()]
        else:
            self._devices = self._workers.probe_devices(self._stop) or []
        self._devices = device_slots(self._devices, self._config.ranks_per_job)
        if self._devices:
            log.info("devices known", extra={"devices": self._devices})
        return bool(self._devices)

    def _run(self) -> None:
        try:
            self._workers.warm_up()  # the forkserver imports torch now: the first job starts fast
            self._reap_orphans()
            while not self._stop.is_set():
                try:
                    self._cycle()
                except Exception:
                    log.exception("supervisor cycle failed; retrying")
                    time.sleep(1.0)
                self._wait()
        finally:
            self._halt_all()

    def _cycle(self) -> None:
        self._pump()
        self._enforce_cancels()
        self._enforce_budgets()
        self._schedule()

    def _wait(self) -> None:
        with self._lock:
            connections = [a.handle.messages for a in self._active.values()]
        wake = self._changes.supervisor_wake
        if connections:
            wait_for_connections(connections, timeout=_POLL_SECONDS)
        else:
            wake.wait(_POLL_SECONDS)
        wake.clear()

    # -- transactions -------------------------------------------------------------------------

    def _commit(self, work: Any) -> Any:
        """Run ``work(session)`` in one transaction (again on fresh state if a concurrent
        change to the job won, see ``JobRow.version``), then wake the relay and the watchers."""
        result = run_in_transaction(self._deps.sessions, work)
        self._relay.wake()
        self._changes.notify()
        return result

    # -- scheduling ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        with self._deps.sessions() as session:
            anything_waits = bool(runnable_jobs(session))
        if not anything_waits or not self._resolve_devices():
            return
        with self._lock:
            busy = {a.device for a in self._active.values()}
            running = {a.job for a in self._active.values()}
        free = [d for d in self._devices if d not in busy]
        if not free:
            return
        with self._deps.sessions() as session:
            repo = TrainerRepository(session)
            waiting: list[tuple[str, bool]] = []
            for name in runnable_jobs(session):
                row = repo.job_row(name)
                if name not in running and row is not None:
                    waiting.append((name, row.cancel_requested))
        for name, cancel_requested in waiting:
            if not free:
                return
            if not self._claims.take(name):
                continue  # a live node runs it
            launched = False
            try:
                # a running job between a crash and its resume was cancelled: nothing to stop
                if cancel_requested and self._commit(lambda s, n=name: cancel_without_worker(s, n)):
                    self._metrics.jobs_finished.labels(JobState.CANCELLED.value).inc()
                    continue
                launched = self._launch(name, free[0])
            finally:
                if not launched:
                    self._claims.release(name)
            if launched:
                free.pop(0)

    def _plan(self, job: TrainingJob, row: Any, device: str) -> WorkerPlan:
        """Everything a worker needs, with local paths; raises for unusable inputs."""
        model = self._models.resolve(job.config.base_model)
        manifest = self._artifacts.materialize(job.split.manifest_uri)
        dataset = self._artifacts.materialize(job.split.dataset_artifact_uri)
        return WorkerPlan(
            job=job.name,
            task_type=job.task_type,
            model_dir=str(model.path),
            base_model=job.config.base_model,
            manifest_path=str(manifest),
            manifest_sha256=job.split.manifest_sha256,
            dataset_path=str(dataset),
            adapter=job.config.adapter,
            hyperparameters=job.config.hyperparameters,
            stopping=job.config.stopping,
            checkpointing=job.config.checkpointing,
            artifact_root=self._artifacts.location,
            artifact_prefix=f"jobs/{job.id}",
            device=device,
            micro_batch_size=row.micro_batch_size,
            accumulation_steps=row.accumulation_steps,
            resume_state_uri=row.latest_state_uri,
            elapsed_before_seconds=row.training_seconds_done,
            allow_oom_retry=row.oom_retries == 0,
            cpu_threads=self._config.cpu_threads,
            micro_batch_tokens=self._config.micro_batch_tokens,
            compile_layers=self._config.compile_layers,
            world_size=self._config.ranks_per_job,
            sharding=self._config.sharding,
            kubernetes=self._config.kubernetes,
            fault_oom_above_batch=self._config.fault_oom_above_batch,
            fault_hold_after_step=self._config.fault_hold_after_step,
            artifact_s3_endpoint_url=self._config.s3_endpoint_url or "",
        )

    def _prepare(self, name: str, device: str) -> tuple[WorkerPlan, TrainingJob] | None:
        """The plan of the job's next attempt; None (the job failed) when its model or data
        can no longer be used."""
        with self._deps.sessions() as session:
            row = TrainerRepository(session).job_row(name)
            if row is None:
                return None
            job = job_from_row(row, self._deps.pricing)
            failure: tuple[FailureReason, str] | None = None
            try:
                return self._plan(job, row, device), job
            except ModelRefused as error:
                failure = (FailureReason.MODEL_REFUSED, str(error))
            except ModelingError as error:
                failure = (FailureReason.MODEL_LOAD_FAILED, str(error))
            except ArtifactError as error:
                failure = (FailureReason.DATA_UNAVAILABLE, str(error))
        self._fail(name, *failure)
        return None

    def _claimed_runnable(self, name: str) -> bool:
        """Whether ``name``, now claimed by this node, still waits to run (another node may
        have run it to the end since the list was read). A RUNNING job whose attempt is still
        open was left by a node that died: that attempt is closed first, as a halt at its
        last report."""
        with self._deps.sessions() as session:
            row = TrainerRepository(session).job_row(name)
            if row is None or row.state not in (JobState.QUEUED.value, JobState.RUNNING.value):
                return False
            abandoned = row.state == JobState.RUNNING.value and row.attempt_started_at is not None
            last_seen = utc(row.update_time)
        if abandoned:
            log.warning("resuming a job a stopped node left running", extra={"job": name})
            self._settle_abandoned(name, last_seen)
            return self._claimed_runnable(name)
        return True

    def _settle_abandoned(self, name: str, last_seen: datetime | None) -> JobState | None:
        """Close the attempt a stopped process left open; its device time ended when it last
        reported, not now. The job stays RUNNING (to resume) unless it was cancelled."""
        state: JobState | None = self._commit(
            lambda s: record_worker_lost(
                s, self._deps, name, crashed=False, max_restarts=0, ended_at=last_seen
            )
        )
        return state

    def _launch(self, name: str, device: str) -> bool:
        """Start a worker for ``name`` (claimed by this node) on ``device``."""
        if not self._claimed_runnable(name):
            return False
        prepared = self._prepare(name, device)
        if prepared is None:
            return False
        plan, job = prepared
        resuming = job.state is JobState.RUNNING
        if not self._commit(lambda s: begin_attempt(s, name, device=device, pid=None)):
            return False
        try:
            handle = self._workers.start(plan, log_level=self._config.log_level)
        except Exception as error:  # a worker that cannot start fails its job
            log.exception("worker failed to start", extra={"job": name})
            self._fail(name, FailureReason.INTERNAL, f"the worker could not start: {error}")
            return False
        self._commit(lambda s: _set_pid(s, name, handle.pid))
        progress = job.progress
        with self._lock:
            self._active[device] = _Active(
                name,
                device,
                handle,
                last_step=progress.step,
                last_tokens=progress.tokens_seen,
                started_at=time.monotonic(),
            )
        if resuming:
            self._metrics.worker_restarts.labels("resume").inc()
        log.info(
            "worker started",
            extra={
                "job": name,
                "device": device,
                "pid": handle.pid,
                "resume": plan.resume_state_uri,
            },
        )
        return True

    def _fail(self, name: str, reason: FailureReason, message: str) -> None:
        if self._commit(lambda s: record_failed(s, self._deps, name, reason, message)):
            self._metrics.failures.labels(reason.value).inc()
            self._metrics.jobs_finished.labels(JobState.FAILED.value).inc()

    # -- relaying -----------------------------------------------------------------------------

    def _pump(self) -> None:
        with self._lock:
            actives = list(self._active.values())
        for active in actives:
            connection = active.handle.messages
            try:
                while connection.poll():
                    self._handle(active, decode_message(connection.recv()))
            except (EOFError, OSError):
                self._worker_gone(active)
                continue
            if not active.handle.process.is_alive() and not connection.poll():
                self._worker_gone(active)

    def _handle(self, active: _Active, message: WorkerMessage) -> None:
        name = active.job
        metrics = self._metrics
        if isinstance(message, WorkerStarted):
            active.last_step, active.last_tokens = message.step, message.tokens_seen
            metrics.record_worker_start(message.fallbacks, message.skipped_rows)
            self._commit(lambda s: record_started(s, self._deps, name, message))
        elif isinstance(message, WorkerProgress):
            self._count(active, message.step, message.tokens_seen)
            metrics.tokens_per_second.labels(name).set(message.tokens_per_second)
            if message.train_loss is not None:
                metrics.train_loss.labels(name).set(message.train_loss)
            if message.validation_loss is not None:
                metrics.validation_loss.labels(name).set(message.validation_loss)
            self._commit(lambda s: record_progress(s, name, message))
        elif isinstance(message, WorkerCheckpoint):
            self._count(active, message.step, message.tokens_seen)
            keep = self._keep_best_k(name)
            outcome = self._commit(
                lambda s: record_checkpoint(s, self._deps, name, message, keep_best_k=keep)
            )
            if outcome.recorded:
                metrics.checkpoints.inc()
            self._delete(outcome.delete_uris)
            self._update_cost(name)
        elif isinstance(message, WorkerOomRetry):
            metrics.worker_restarts.labels("out_of_memory").inc()
            self._commit(lambda s: record_oom_retry(s, name, message))
        elif isinstance(message, WorkerFinished):
            active.settled = True
            state = self._commit(lambda s: record_finished(s, self._deps, name, message))
            if state is not None:
                metrics.jobs_finished.labels(state.value).inc()
            self._update_cost(name)
        elif isinstance(message, WorkerFailed):
            active.settled = True
            self._fail(name, message.reason, message.message)
            self._update_cost(name)
        elif isinstance(message, WorkerDiskFull):
            active.settled = True
            metrics.disk_full.inc()
            state = self._commit(lambda s: record_disk_full(s, name, message.message))
            if state is not None:
                metrics.jobs_finished.labels(state.value).inc()
            self._update_cost(name)

    def _count(self, active: _Active, step: int, tokens: int) -> None:
        if step > active.last_step:
            self._metrics.steps.inc(step - active.last_step)
        if tokens > active.last_tokens:
            self._metrics.tokens.inc(tokens - active.last_tokens)
        active.last_step, active.last_tokens = (
            max(step, active.last_step),
            max(tokens, active.last_tokens),
        )

    def _keep_best_k(self, name: str) -> int:
        with self._deps.sessions() as session:
            row = TrainerRepository(session).job_row(name)
            return (
                0
                if row is None
                else job_from_row(row, self._deps.pricing).config.checkpointing.keep_best_k
            )

    def _update_cost(self, name: str) -> None:
        with self._deps.sessions() as session:
            row = TrainerRepository(session).job_row(name)
            if row is None:
                return
            cost = job_from_row(row, self._deps.pricing).cost
        self._metrics.device_seconds.labels(name, cost.device_type).set(cost.device_seconds)
        self._metrics.cost.labels(name, cost.currency).set(float(cost.amount))

    def _delete(self, uris: list[str]) -> None:
        for uri in uris:
            try:
                self._artifacts.delete(uri)
            except ArtifactError as error:
                log.warning("could not delete an artifact", extra={"uri": uri, "error": str(error)})

    def _worker_gone(self, active: _Active) -> None:
        """The worker's pipe closed: settle the job if the worker did not."""
        process = active.handle.process
        process.join(5)
        active.handle.close()
        with self._lock:
            self._active.pop(active.device, None)
        self._metrics.device_seconds_total.inc(time.monotonic() - active.started_at)
        if not active.settled:
            code = process.exitcode
            log.warning("worker died", extra={"job": active.job, "exitcode": code})
            state = self._commit(
                lambda s: record_worker_lost(
                    s,
                    self._deps,
                    active.job,
                    crashed=True,
                    max_restarts=self._config.max_worker_restarts,
                )
            )
            if state is JobState.FAILED:
                self._metrics.failures.labels(FailureReason.WORKER_CRASHED.value).inc()
            elif state is None:
                self._metrics.worker_restarts.labels("crash").inc()
            if state is not None:
                self._metrics.jobs_finished.labels(state.value).inc()
        # finished, failed, or RUNNING to resume from its checkpoint: on any node, this one too
        self._claims.release(active.job)
        self._changes.notify()

    # -- cancelling and halting -----------------------------------------------------------------

    def _enforce_cancels(self) -> None:
        with self._lock:
            actives = list(self._active.values())
        if not actives:
            return
        with self._deps.sessions() as session:
            repo = TrainerRepository(session)
            requested = {
                a.job for a in actives if (row := repo.job_row(a.job)) and row.cancel_requested
            }
        now = time.monotonic()
        for active in actives:
            if active.job not in requested:
                continue
            if active.cancel_sent_at is None:
                active.handle.send(CANCEL)
                active.cancel_sent_at = now
                log.info("cancel sent to worker", extra={"job": active.job})
            elif now - active.cancel_sent_at > self._config.cancel_grace_seconds:
                log.warning("cancelled worker did not stop; killing it", extra={"job": active.job})
                active.handle.process.kill()

    def _enforce_budgets(self) -> None:
        """Stop (with a checkpoint) every running job whose cost reached its per-run budget."""
        with self._lock:
            actives = [a for a in self._active.values() if not a.budget_stop_sent]
        if not actives:
            return
        with self._deps.sessions() as session:
            repo = TrainerRepository(session)
            exhausted = []
            for active in actives:
                row = repo.job_row(active.job)
                if row is None:
                    continue
                job = job_from_row(row, self._deps.pricing)
                if budget_exhausted(job.budget, job.cost):
                    exhausted.append((active, job))
        for active, job in exhausted:
            active.handle.send(BUDGET_EXHAUSTED)
            active.budget_stop_sent = True
            log.info(
                "per-run budget reached; stopping the job with a checkpoint",
                extra={
                    "job": job.name,
                    "cost": str(job.cost.amount),
                    "budget": str(job.budget.per_run),
                    "currency": job.cost.currency,
                },
            )

    def _halt_all(self) -> None:
        """Service shutdown: halt workers, record their attempts; jobs stay RUNNING."""
        with self._lock:
            actives = list(self._active.values())
        for active in actives:
            active.handle.send(HALT)
        deadline = time.monotonic() + _HALT_WAIT_SECONDS
        for active in actives:
            active.handle.process.join(max(0.1, deadline - time.monotonic()))
            if active.handle.process.is_alive():
                active.handle.process.kill()
                active.handle.process.join(5)
            # relay what it said before stopping (a checkpoint, a result)
            with suppress(EOFError, OSError):
                while active.handle.messages.poll():
                    self._handle(active, decode_message(active.handle.messages.recv()))
            active.handle.close()
            if not active.settled:
                self._commit(
                    lambda s, a=active: record_worker_lost(
                        s, self._deps, a.job, crashed=False, max_restarts=0
                    )
                )
            self._claims.release(active.job)
        with self._lock:
            self._active.clear()

    def _reap_orphans(self) -> None:
        """Close the attempts of RUNNING jobs no live process runs (a previous run of this
        service, or a stopped node), so they resume; those a live node holds are left alone.

        Workers of a stopped process halt when its pipes close. With one node (no claims) a
        worker of this service's previous run may still be finishing a step on this machine:
        it is killed. With claims the pid may be another node's, meaningless here, and is left.
        """
        with self._deps.sessions() as session:
            rows = TrainerRepository(session).job_rows_in([JobState.RUNNING])
            interrupted = [(r.name, r.worker_pid, utc(r.update_time)) for r in rows]
        for name, pid, last_seen in interrupted:
            if not self._claims.take(name):
                continue  # a live node runs it
            try:
                if not self._claims.enabled and pid is not None and _is_worker(pid):
                    log.warning("stopping an orphaned worker", extra={"job": name, "pid": pid})
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self._settle_abandoned(name, last_seen)
            finally:
                self._claims.release(name)


def _set_pid(session: Session, name: str, pid: int | None) -> None:
    row = TrainerRepository(session).job_row(name)
    if row is not None:
        row.worker_pid = pid


def _is_worker(pid: int) -> bool:
    """Whether ``pid`` is alive and a multiprocessing child (a worker), not a reused pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"multiprocessing" in cmdline
