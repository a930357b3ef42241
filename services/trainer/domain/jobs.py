"""A training job and what is recorded about it: its life (:class:`JobState` and its allowed
transitions, failure and stop reasons), the split it trains on, its progress and loss curve,
its checkpoints and lineage, and the training policies that make jobs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from services.trainer.domain.config import AdapterSpec, BaseModelRef, Hyperparameters, JobConfig
from services.trainer.domain.costs import Budget, Cost
from services.trainer.domain.estimates import TrainingEstimate
from shared.modeling.tokenizer_fingerprint import TokenizerFingerprintRecord
from shared.ownership import Owner
from shared.task_types import TaskType

JOB_PREFIX = "trainingJobs/"
POLICY_PREFIX = "trainingPolicies/"
MAX_LOSS_TREND_POINTS = 1000


class JobState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def can_transition(current: JobState, target: JobState) -> bool:
    """QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED (a queued job may also be cancelled,
    or fail before it ever runs)."""
    return target in _TRANSITIONS[current]


class FailureReason(StrEnum):
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    MODEL_REFUSED = "MODEL_REFUSED"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    DATA_UNAVAILABLE = "DATA_UNAVAILABLE"
    NON_FINITE_LOSS = "NON_FINITE_LOSS"
    WORKER_CRASHED = "WORKER_CRASHED"
    INTERNAL = "INTERNAL"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    LABEL_AUDIT_BLOCKED = "LABEL_AUDIT_BLOCKED"


class StopReason(StrEnum):
    """Why training stopped: a stopping rule (the job succeeded), a cancel, or a failure."""

    MAX_STEPS = "MAX_STEPS"
    EPOCHS_COMPLETED = "EPOCHS_COMPLETED"
    EARLY_STOPPING = "EARLY_STOPPING"
    MAX_DURATION = "MAX_DURATION"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    #: The job's cost reached its per-run budget; it ends SUCCEEDED with what it trained.
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"

    @property
    def completed(self) -> bool:
        """A stopping rule ended training: the adapter is as trained as the job asked."""
        return self not in (StopReason.CANCELLED, StopReason.FAILED)


class AuditVerdict(StrEnum):
    """A dataset version's label-audit verdict (``DatasetAudited.verdict``)."""

    PASSED = "PASSED"
    WARNED = "WARNED"
    BLOCKED = "BLOCKED"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class DatasetAuditInfo:
    """What the trainer keeps of a ``DatasetAudited``: only BLOCKED stops training."""

    dataset_version: str
    verdict: AuditVerdict
    reason: str = ""
    noise_rate: float = 0.0
    suspected_count: int = 0
    suspected_line_numbers: tuple[int, ...] = ()

    @property
    def blocks_training(self) -> bool:
        return self.verdict is AuditVerdict.BLOCKED

    def refusal(self) -> str:
        """Why a job on this version is refused: the audit's rule and numbers, and rows."""
        lines = ", ".join(str(n) for n in self.suspected_line_numbers[:20])
        return (
            f"dataset version {self.dataset_version} was blocked by its label audit: "
            f"{self.reason or 'label_audit'}"
            + (f" (suspected lines: {lines})" if lines and "lines" not in self.reason else "")
        )


@dataclass(frozen=True)
class SplitInfo:
    """What the trainer knows of a split (from ``SplitCreated`` or the splitter's ``Split``)."""

    name: str
    dataset: str
    dataset_version: str
    dataset_content_sha256: str
    task_type: TaskType
    manifest_uri: str
    manifest_sha256: str
    dataset_artifact_uri: str
    train_rows: int
    validation_rows: int
    test_rows: int = 0
    labels: tuple[str, ...] = ()


#: The wait after the first attempt that ended on a full disk; it doubles with each such
#: attempt in a row, up to the cap, until a checkpoint is written again.
DISK_FULL_FIRST_WAIT = timedelta(seconds=30)
DISK_FULL_MAX_WAIT = timedelta(minutes=15)


def disk_full_wait(attempts_in_a_row: int) -> timedelta:
    """How long a job waits before resuming after its ``attempts_in_a_row``-th (1-based)
    attempt in a row that ran out of disk: room for an operator (or retention) to free space
    without the job hammering a full disk."""
    doublings = min(max(attempts_in_a_row, 1) - 1, 10)
    return min(DISK_FULL_FIRST_WAIT * 2**doublings, DISK_FULL_MAX_WAIT)


def policy_job_id(policy_name: str, split_name: str) -> str:
    """The id of the job a policy makes for a split: the same pair always gives the same id,
    so a SplitCreated seen twice (even re-published under a new event id) makes one job."""
    policy_id = policy_name.removeprefix(POLICY_PREFIX)
    digest = hashlib.sha256(f"{policy_name}\n{split_name}".encode()).hexdigest()[:16]
    return f"{policy_id[:40].rstrip('-')}-{digest}"


def checkpoint_name(job_name: str, step: int) -> str:
    """``trainingJobs/{job}/checkpoints/step-{step}``: one checkpoint per step."""
    return f"{job_name}/checkpoints/step-{step}"


# -- the job --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossPoint:
    step: int
    epoch: float
    train_loss: float | None = None
    validation_loss: float | None = None


class RowSkipReason(StrEnum):
    """Why training left a row of its split out (see ``RowSkipReason`` in the contract)."""

    #: The chat template does not let the assistant's tokens be told apart from the rest.
    UNMASKABLE_CHAT = "UNMASKABLE_CHAT"
    #: Truncation to ``max_seq_length`` left no completion token to learn from.
    NO_LOSS_TOKEN = "NO_LOSS_TOKEN"  # noqa: S105 - a reason, not a password


@dataclass(frozen=True)
class SkippedRows:
    """Rows of the split that training leaves out, for one reason."""

    reason: RowSkipReason
    count: int
    #: The first few of their row ids, in split order.
    example_row_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineFallback:
    """The engine could not use a feature and took a slower path (a warning and a metric)."""

    #: What was asked for, e.g. ``packing``.
    feature: str
    #: Why not, a short label, e.g. ``unsupported_signature`` or ``kernel_error``.
    reason: str
    #: The details, for the log.
    detail: str = ""


@dataclass(frozen=True)
class Progress:
    """A snapshot of a running job (see ``TrainingProgress``)."""

    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    train_loss: float | None = None
    validation_loss: float | None = None
    best_validation_loss: float | None = None
    learning_rate: float = 0.0
    tokens_per_second: float = 0.0
    tokens_seen: int = 0
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0
    update_time: datetime | None = None
    #: Rows of the split training leaves out, by reason (known once a worker encoded them).
    skipped_rows: tuple[SkippedRows, ...] = ()


@dataclass(frozen=True)
class Lineage:
    """Everything needed to reproduce a checkpoint (see ``tuneline.common.v1.Lineage``)."""

    dataset: str
    dataset_version: str
    dataset_content_sha256: str
    split: str
    split_manifest_sha256: str
    base_model: BaseModelRef
    adapter: AdapterSpec
    hyperparameters: Hyperparameters
    training_job: str
    task_type: TaskType
    target_model: str
    software_versions: Mapping[str, str] = field(default_factory=dict)
    checkpoint: str = ""


@dataclass
class TrainingJob:
    """A training job and everything recorded about it."""

    name: str
    target_model: str
    task_type: TaskType
    split: SplitInfo
    config: JobConfig
    state: JobState = JobState.QUEUED
    total_steps: int = 0
    failure_reason: FailureReason | None = None
    failure_message: str = ""
    stop_reason: StopReason | None = None
    progress: Progress = field(default_factory=Progress)
    loss_trend: list[LossPoint] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    best_checkpoint: str = ""
    latest_checkpoint: str = ""
    training_policy: str = ""
    software_versions: Mapping[str, str] = field(default_factory=dict)
    attempt_count: int = 0
    device: str = ""
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime | None = None
    request_id: str = ""
    cancel_requested: bool = False
    cancel_reason: str = ""
    #: Micro-batch actually used (halved by an OOM retry) and the accumulation that keeps the
    #: effective batch.
    micro_batch_size: int = 0
    accumulation_steps: int = 0
    oom_retries: int = 0
    crash_count: int = 0
    #: The limits the job was admitted under (see the proto's ``TrainingJob.budget``).
    budget: Budget = field(default_factory=Budget)
    #: What the job was expected to process and cost when created; None when not estimated.
    estimate: TrainingEstimate | None = None
    #: Why a RUNNING job is not training now (a full disk), and when it is tried again.
    status_message: str = ""
    resume_time: datetime | None = None
    #: Who created it: the verified caller of CreateTrainingJob, or the policy's name for a job
    #: a training policy made (automation: no person chose that run); "" without auth. The
    #: registry's four-eyes approval refuses it as approver of the job's checkpoints.
    creator: str = ""

    @property
    def id(self) -> str:
        return self.name.removeprefix(JOB_PREFIX)

    def lineage(self, checkpoint: str = "") -> Lineage:
        return Lineage(
            dataset=self.split.dataset,
            dataset_version=self.split.dataset_version,
            dataset_content_sha256=self.split.dataset_content_sha256,
            split=self.split.name,
            split_manifest_sha256=self.split.manifest_sha256,
            base_model=self.config.base_model,
            adapter=self.config.adapter,
            hyperparameters=self.config.hyperparameters,
            training_job=self.name,
            task_type=self.task_type,
            target_model=self.target_model,
            software_versions=dict(self.software_versions),
            checkpoint=checkpoint,
        )


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint the job wrote (see ``Checkpoint``)."""

    name: str
    training_job: str
    target_model: str
    step: int
    epoch: float
    train_loss: float
    validation_loss: float | None
    tokens_seen: int
    artifact_uri: str
    sha256: str
    size_bytes: int
    is_best: bool
    is_final: bool
    cost: Cost
    create_time: datetime
    artifact_deleted: bool = False
    #: Why training stopped, on the checkpoint written when it stopped (``is_final``).
    stop_reason: StopReason | None = None
    #: The tokenizer it was trained with; None for checkpoints recorded before fingerprints.
    tokenizer_fingerprint: TokenizerFingerprintRecord | None = None


@dataclass(frozen=True)
class TrainingPolicy:
    """ "On every SplitCreated for ``dataset``, train ``target_model`` from ``template``."""

    name: str
    dataset: str
    target_model: str
    template: JobConfig
    disabled: bool = False
    create_time: datetime | None = None
    update_time: datetime | None = None
    owner: Owner = field(default_factory=Owner)
    budget: Budget = field(default_factory=Budget)
    #: The target model's budget when the policy was set (see the trainer's PolicyRow).
    model_budget: Budget = field(default_factory=Budget)

    @property
    def id(self) -> str:
        return self.name.removeprefix(POLICY_PREFIX)


def thin_loss_trend(
    points: Iterable[LossPoint], limit: int = MAX_LOSS_TREND_POINTS
) -> list[LossPoint]:
    """At most ``limit`` points, evenly thinned, always keeping the first and the last."""
    ordered = sorted(points, key=lambda p: p.step)
    if len(ordered) <= limit:
        return ordered
    stride = (len(ordered) - 1) / (limit - 1)
    return [ordered[round(i * stride)] for i in range(limit)]
