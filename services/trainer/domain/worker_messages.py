"""What a worker is told to do, and what it reports back: plain data, no torch.

The supervisor builds a :class:`WorkerPlan` for each worker start (a first run, a resume after
a crash, a restart after the service came back) and the worker sends :class:`WorkerMessage`
values back over a pipe, as plain dicts (:func:`encode_message` / :func:`decode_message`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.trainer.domain.config import (
    AdapterSpec,
    BaseModelRef,
    CheckpointPolicy,
    Hyperparameters,
    StoppingRules,
)
from services.trainer.domain.jobs import EngineFallback, FailureReason, SkippedRows, StopReason
from services.trainer.domain.jsonable import from_jsonable, jsonable
from services.trainer.domain.launch import KubernetesLaunch, Sharding
from shared.modeling.tokenizer_fingerprint import TokenizerFingerprintRecord
from shared.task_types import TaskType


@dataclass(frozen=True)
class WorkerPlan:
    """One worker start. Paths are local to the machine; every default is resolved except the
    device-dependent ones (precision, packing), which the worker resolves for ``device``."""

    job: str
    task_type: TaskType
    model_dir: str
    base_model: BaseModelRef
    manifest_path: str
    manifest_sha256: str
    dataset_path: str
    adapter: AdapterSpec
    hyperparameters: Hyperparameters
    stopping: StoppingRules
    checkpointing: CheckpointPolicy
    #: The trainer's artifact store (a local path or ``s3://bucket/prefix``); checkpoints go
    #: under ``<prefix>/checkpoints/step-N`` and resumable states under ``<prefix>/states/step-N``.
    artifact_root: str
    artifact_prefix: str
    #: The device slot: ``cpu``, ``cuda:0``, or for a data-parallel job one CUDA device per
    #: rank, ``cuda:0,cuda:1`` (rank ``r`` trains on the ``r``-th).
    device: str = "cpu"
    #: Ranks the job trains with, data-parallel (``torchrun``; see ``engine.distributed``).
    world_size: int = 1
    #: How the ranks hold the base model: whole on each, or its frozen weights sharded (FSDP2).
    sharding: Sharding = Sharding.DATA_PARALLEL
    #: Where the ranks run: None on the trainer's node (``torchrun``), else in Kubernetes.
    kubernetes: KubernetesLaunch | None = None
    #: The micro-batch and accumulation to use (an OOM retry halves / doubles them).
    micro_batch_size: int = 0
    accumulation_steps: int = 0
    #: Packed causal-LM micro-batches by tokens: up to this many tokens each, no example split,
    #: accumulated to the step's examples (0: ``micro_batch_size`` examples each). A smaller
    #: ``micro_batch_size`` than the batch size (an OOM retry) scales it down alike.
    micro_batch_tokens: int = 0
    #: ``torch.compile`` each decoder layer (dynamic token dimension); None: on CUDA only.
    compile_layers: bool | None = None
    #: ``file://`` URI of the training state to resume from; empty for a fresh start.
    resume_state_uri: str = ""
    #: Training time spent by earlier attempts (for ``max_duration``).
    elapsed_before_seconds: float = 0.0
    #: Whether an out-of-memory error may be retried once with half the micro-batch.
    allow_oom_retry: bool = True
    #: Torch threads on the CPU (0: torch's default).
    cpu_threads: int = 0
    #: Test-only fault injection: raise a CUDA out-of-memory error for micro-batches larger
    #: than this many examples (0: off). Set from ``TUNELINE_TRAINER_FAULT_OOM_ABOVE_BATCH``.
    fault_oom_above_batch: int = 0
    #: Test-only: after this step of a job's first run (a resume never holds; its progress and
    #: checkpoint reported) the worker holds until it is halted or cancelled, so a test can
    #: crash or stop it at a known point (0: off). ``TUNELINE_TRAINER_FAULT_HOLD_AFTER_STEP``.
    fault_hold_after_step: int = 0
    #: Endpoint of the S3-compatible server when ``artifact_root`` is ``s3://…`` (empty: AWS).
    artifact_s3_endpoint_url: str = ""

    def to_json(self) -> dict[str, Any]:
        return jsonable(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerPlan:
        return from_jsonable(cls, data)


@dataclass(frozen=True)
class WorkerStarted:
    """The model is loaded and training is about to (re)start at ``step``."""

    step: int
    total_steps: int
    device: str
    device_type: str
    device_count: int
    hyperparameters: Hyperparameters
    train_examples: int
    validation_examples: int
    tokens_seen: int
    #: Rows of the split left out of training and validation, by reason.
    skipped_rows: tuple[SkippedRows, ...] = ()
    #: Features the engine could not use here (e.g. packing without a varlen kernel).
    fallbacks: tuple[EngineFallback, ...] = ()
    kind: str = "started"


@dataclass(frozen=True)
class WorkerProgress:
    """A progress snapshot; ``log_point`` marks a point of the loss curve, with
    ``interval_train_loss`` the mean since the previous point."""

    step: int
    total_steps: int
    epoch: float
    train_loss: float | None
    learning_rate: float
    tokens_per_second: float
    tokens_seen: int
    elapsed_seconds: float
    eta_seconds: float | None
    validation_loss: float | None = None
    log_point: bool = False
    interval_train_loss: float | None = None
    kind: str = "progress"


@dataclass(frozen=True)
class WorkerCheckpoint:
    """A checkpoint is complete in the artifact store (adapter and resumable state)."""

    step: int
    epoch: float
    train_loss: float
    validation_loss: float | None
    tokens_seen: int
    artifact_uri: str
    sha256: str
    size_bytes: int
    state_uri: str
    is_final: bool
    elapsed_seconds: float
    #: Why training stopped, on the checkpoint written when it stopped (``is_final``): a
    #: stopping rule, or CANCELLED for the checkpoint a cancel writes on the way out.
    stop_reason: StopReason | None = None
    #: The tokenizer as trained with; None only from workers older than fingerprints.
    tokenizer_fingerprint: TokenizerFingerprintRecord | None = None
    kind: str = "checkpoint"


@dataclass(frozen=True)
class WorkerOomRetry:
    """Out of memory; training restarts from ``resume_step`` with a smaller micro-batch."""

    micro_batch_size: int
    accumulation_steps: int
    resume_step: int
    message: str
    kind: str = "oom_retry"


@dataclass(frozen=True)
class WorkerFinished:
    """Training ended: by a stopping rule (``stop_reason``) or by cancellation."""

    step: int
    epoch: float
    final_train_loss: float
    elapsed_seconds: float
    tokens_seen: int
    stop_reason: StopReason | None = None
    cancelled: bool = False
    kind: str = "finished"


@dataclass(frozen=True)
class WorkerFailed:
    """Training failed for ``reason``."""

    reason: FailureReason
    message: str
    step: int = 0
    kind: str = "failed"


@dataclass(frozen=True)
class WorkerDiskFull:
    """A write ran out of space (ENOSPC or a quota): the attempt ends, nothing half-written
    is left, and the job resumes from its last complete checkpoint once space may be back."""

    message: str
    step: int = 0
    kind: str = "disk_full"


WorkerMessage = (
    WorkerStarted
    | WorkerProgress
    | WorkerCheckpoint
    | WorkerOomRetry
    | WorkerFinished
    | WorkerFailed
    | WorkerDiskFull
)

_KINDS: dict[str, type[Any]] = {
    "started": WorkerStarted,
    "progress": WorkerProgress,
    "checkpoint": WorkerCheckpoint,
    "oom_retry": WorkerOomRetry,
    "finished": WorkerFinished,
    "failed": WorkerFailed,
    "disk_full": WorkerDiskFull,
}


def encode_message(message: WorkerMessage) -> dict[str, Any]:
    return jsonable(message)


def decode_message(data: dict[str, Any]) -> WorkerMessage:
    kind = data.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown worker message kind {kind!r}")
    return from_jsonable(_KINDS[kind], data)
