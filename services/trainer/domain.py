"""The trainer service's domain: plain dataclasses and rules, no grpc, kafka, torch or SQL.

* the job's configuration (:class:`AdapterSpec`, :class:`Hyperparameters`,
  :class:`StoppingRules`, :class:`CheckpointPolicy`) with the contracts' "zero means default"
  convention, :func:`validate_job_config` (every violation, with its field path) and
  :func:`resolve_job_config` (every default made explicit);
* the job's life (:class:`JobState` and its allowed transitions, failure and stop reasons);
* the rules training follows and the service records: learning-rate schedule, early stopping,
  which checkpoints to keep, planned steps, cost, ETA, policy job ids.
"""

from __future__ import annotations

import hashlib
import math
import re
import types
import typing
from collections import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Any

from shared.errors import FieldViolation
from shared.modeling.tokenizer_fingerprint import TokenizerFingerprintRecord
from shared.ownership import Owner

JOB_PREFIX = "trainingJobs/"
POLICY_PREFIX = "trainingPolicies/"
#: peft matches target modules by name suffix; a name is dotted identifiers.
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")

MAX_RANK = 1024
MAX_DISPLAY_NAME = 200
MAX_LOSS_TREND_POINTS = 1000
#: Longest default sequence: the model's limit, capped here (the contracts' default).
DEFAULT_MAX_SEQ_LENGTH_CAP = 512
#: Validate at least this often when no interval is given (the contracts' default).
DEFAULT_MAX_EVAL_INTERVAL = 500


class TaskType(StrEnum):
    CLASSIFICATION = "classification"
    CAUSAL_LM = "causal_lm"


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


class AdapterMethod(StrEnum):
    LORA = "LORA"
    DORA = "DORA"
    RSLORA = "RSLORA"


class TargetPreset(StrEnum):
    DEFAULT = "DEFAULT"
    ALL_LINEAR = "ALL_LINEAR"


class LearningRateSchedule(StrEnum):
    CONSTANT = "CONSTANT"
    LINEAR = "LINEAR"
    COSINE = "COSINE"


class Precision(StrEnum):
    FP32 = "FP32"
    BF16 = "BF16"
    FP16 = "FP16"


# -- per-architecture defaults ------------------------------------------------------------

#: The attention projections LoRA attaches to by default, by ``config.model_type``.
DEFAULT_TARGET_MODULES: Mapping[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "megatron-bert"),
        ("query", "key", "value"),
    ),
    "distilbert": ("q_lin", "k_lin", "v_lin"),
    "deberta-v2": ("query_proj", "key_proj", "value_proj"),
    "mpnet": ("q", "k", "v"),
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "smollm3",
            "granite",
            "phi",
        ),
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    ),
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
}

#: The classification head trained in full (``modules_to_save``), by ``config.model_type``;
#: encoders call it ``classifier``, decoder-based sequence classifiers ``score``.
_ENCODER_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "camembert",
        "electra",
        "ernie",
        "megatron-bert",
        "distilbert",
        "deberta-v2",
        "mpnet",
    }
)


def default_head_modules(model_type: str) -> tuple[str, ...]:
    """The modules a classification head consists of for ``model_type``."""
    if model_type == "distilbert":
        return ("pre_classifier", "classifier")
    return ("classifier",) if model_type in _ENCODER_TYPES else ("score",)


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseModelRef:
    """A base model as a job names it (one of name/path), plus what resolution found."""

    model_name: str = ""
    model_path: str = ""
    files_sha256: str = ""
    revision: str = ""
    architecture: str = ""
    model_type: str = ""


@dataclass(frozen=True)
class AdapterSpec:
    """The adapter; zero/empty fields mean the default (see :func:`resolve_adapter`)."""

    method: AdapterMethod | None = None
    rank: int = 0
    alpha: float = 0.0
    dropout: float | None = None
    target_modules: tuple[str, ...] = ()
    target_preset: TargetPreset | None = None
    modules_to_save: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hyperparameters:
    """Optimisation settings; zero/None fields mean the default
    (see :func:`resolve_hyperparameters`). ``precision`` and ``packing`` stay ``None`` until
    the device is known (bf16 and packing on CUDA, fp32 and padding on CPU)."""

    learning_rate: float = 0.0
    learning_rate_schedule: LearningRateSchedule | None = None
    warmup_ratio: float | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    batch_size: int = 0
    gradient_accumulation_steps: int = 0
    epochs: float = 0.0
    max_steps: int = 0
    max_seq_length: int = 0
    seed: int | None = None
    precision: Precision | None = None
    gradient_checkpointing: bool | None = None
    packing: bool | None = None
    max_grad_norm: float | None = None


@dataclass(frozen=True)
class StoppingRules:
    eval_every_n_steps: int = 0
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    max_duration_seconds: float | None = None


@dataclass(frozen=True)
class CheckpointPolicy:
    every_n_steps: int = 0
    keep_best_k: int = 0


@dataclass(frozen=True)
class JobConfig:
    """Everything a job trains with, apart from its split (a policy's job template)."""

    base_model: BaseModelRef
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    stopping: StoppingRules = field(default_factory=StoppingRules)
    checkpointing: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    display_name: str = ""


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


# -- validation -----------------------------------------------------------------------------


def _violation(prefix: str, name: str, description: str, reason: str) -> FieldViolation:
    return FieldViolation(f"{prefix}.{name}" if prefix else name, description, reason)


def validate_adapter(spec: AdapterSpec, prefix: str) -> list[FieldViolation]:
    """Violations of an adapter spec (its fields as given, before defaults)."""
    found: list[FieldViolation] = []
    if spec.rank < 0 or spec.rank > MAX_RANK:
        found.append(
            _violation(prefix, "rank", f"must be in [1, {MAX_RANK}] (0: default 8)", "OUT_OF_RANGE")
        )
    if spec.alpha < 0 or not math.isfinite(spec.alpha):
        found.append(
            _violation(prefix, "alpha", "must be > 0 (0: default 2 * rank)", "OUT_OF_RANGE")
        )
    if spec.dropout is not None and not 0.0 <= spec.dropout < 1.0:
        found.append(_violation(prefix, "dropout", "must be in [0, 1)", "OUT_OF_RANGE"))
    for index, name in enumerate(spec.target_modules):
        if not _MODULE_NAME.match(name):
            found.append(
                _violation(
                    prefix,
                    f"target_modules[{index}]",
                    f"{name!r} is not a module name (dotted identifiers)",
                    "INVALID_FORMAT",
                )
            )
    for index, name in enumerate(spec.modules_to_save):
        if not _MODULE_NAME.match(name):
            found.append(
                _violation(
                    prefix,
                    f"modules_to_save[{index}]",
                    f"{name!r} is not a module name",
                    "INVALID_FORMAT",
                )
            )
    return found


def validate_hyperparameters(hp: Hyperparameters, prefix: str) -> list[FieldViolation]:
    """Violations of hyperparameters (as given, before defaults)."""
    found: list[FieldViolation] = []

    def bad(name: str, description: str, reason: str = "OUT_OF_RANGE") -> None:
        found.append(_violation(prefix, name, description, reason))

    if hp.learning_rate < 0 or not math.isfinite(hp.learning_rate):
        bad("learning_rate", "must be > 0 (0: default 2e-4)")
    if hp.warmup_ratio is not None and not 0.0 <= hp.warmup_ratio < 1.0:
        bad("warmup_ratio", "must be in [0, 1)")
    if hp.warmup_steps is not None and hp.warmup_steps < 0:
        bad("warmup_steps", "must be >= 0")
    if hp.weight_decay is not None and (hp.weight_decay < 0 or not math.isfinite(hp.weight_decay)):
        bad("weight_decay", "must be >= 0")
    if hp.batch_size < 0:
        bad("batch_size", "must be >= 1 (0: default 16)")
    if hp.gradient_accumulation_steps < 0:
        bad("gradient_accumulation_steps", "must be >= 1 (0: 1)")
    if hp.epochs < 0 or not math.isfinite(hp.epochs):
        bad("epochs", "must be > 0 (0: one epoch unless max_steps is set)")
    if hp.max_steps < 0:
        bad("max_steps", "must be >= 0 (0: no bound)")
    if hp.max_seq_length != 0 and hp.max_seq_length < 8:
        bad("max_seq_length", "must be >= 8 (0: the model's limit capped at 512)")
    if hp.max_grad_norm is not None and not (
        hp.max_grad_norm > 0 and math.isfinite(hp.max_grad_norm)
    ):
        bad("max_grad_norm", "must be > 0")
    return found


def validate_stopping(rules: StoppingRules, prefix: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if rules.eval_every_n_steps < 0:
        found.append(
            _violation(prefix, "eval_every_n_steps", "must be >= 1 (0: default)", "OUT_OF_RANGE")
        )
    if rules.early_stopping_patience < 0:
        found.append(_violation(prefix, "early_stopping_patience", "must be >= 0", "OUT_OF_RANGE"))
    if rules.early_stopping_min_delta < 0 or not math.isfinite(rules.early_stopping_min_delta):
        found.append(_violation(prefix, "early_stopping_min_delta", "must be >= 0", "OUT_OF_RANGE"))
    if rules.max_duration_seconds is not None and not rules.max_duration_seconds > 0:
        found.append(
            _violation(prefix, "max_duration", "must be a positive duration", "OUT_OF_RANGE")
        )
    return found


def validate_checkpointing(policy: CheckpointPolicy, prefix: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if policy.every_n_steps < 0:
        found.append(
            _violation(
                prefix, "every_n_steps", "must be >= 1 (0: at every validation)", "OUT_OF_RANGE"
            )
        )
    if policy.keep_best_k < 0:
        found.append(
            _violation(prefix, "keep_best_k", "must be >= 0 (0: keep all)", "OUT_OF_RANGE")
        )
    return found


def validate_job_config(config: JobConfig, prefix: str) -> list[FieldViolation]:
    """Every violation of a job configuration, with field paths under ``prefix``
    (``training_job`` or ``training_policy.job_template``). The base model's existence and
    safety are checked separately (they need the file system)."""
    found: list[FieldViolation] = []
    base = config.base_model
    if bool(base.model_name) == bool(base.model_path):
        found.append(
            _violation(
                prefix,
                "base_model",
                "set exactly one of model_name and model_path",
                "REQUIRED" if not (base.model_name or base.model_path) else "ONE_OF",
            )
        )
    if len(config.display_name) > MAX_DISPLAY_NAME:
        found.append(
            _violation(prefix, "display_name", f"at most {MAX_DISPLAY_NAME} characters", "TOO_LONG")
        )
    found += validate_adapter(config.adapter, f"{prefix}.adapter_spec")
    found += validate_hyperparameters(config.hyperparameters, f"{prefix}.hyperparameters")
    found += validate_stopping(config.stopping, f"{prefix}.stopping_rules")
    found += validate_checkpointing(config.checkpointing, f"{prefix}.checkpoint_policy")
    return found


def target_modules_for(adapter: AdapterSpec, model_type: str) -> tuple[str, ...] | str | None:
    """What LoRA attaches to: explicit modules, ``"all-linear"``, the architecture's default,
    or ``None`` when the architecture has no known default."""
    if adapter.target_modules:
        return adapter.target_modules
    if adapter.target_preset is TargetPreset.ALL_LINEAR:
        return "all-linear"
    return DEFAULT_TARGET_MODULES.get(model_type)


# -- defaults ------------------------------------------------------------------------------


def resolve_adapter(spec: AdapterSpec, task: TaskType, model_type: str) -> AdapterSpec:
    """The adapter with every default explicit (target modules resolved for ``model_type``)."""
    rank = spec.rank or 8
    targets = spec.target_modules
    if not targets and spec.target_preset is not TargetPreset.ALL_LINEAR:
        targets = DEFAULT_TARGET_MODULES.get(model_type, ())
    modules_to_save = spec.modules_to_save
    if not modules_to_save and task is TaskType.CLASSIFICATION:
        modules_to_save = default_head_modules(model_type)
    return AdapterSpec(
        method=spec.method or AdapterMethod.LORA,
        rank=rank,
        alpha=spec.alpha or 2.0 * rank,
        dropout=0.0 if spec.dropout is None else spec.dropout,
        target_modules=tuple(targets),
        target_preset=spec.target_preset or TargetPreset.DEFAULT,
        modules_to_save=tuple(modules_to_save),
    )


def resolve_hyperparameters(hp: Hyperparameters, model_max_length: int | None) -> Hyperparameters:
    """Hyperparameters with every device-independent default explicit."""
    max_len = hp.max_seq_length or min(
        model_max_length or DEFAULT_MAX_SEQ_LENGTH_CAP, DEFAULT_MAX_SEQ_LENGTH_CAP
    )
    return replace(
        hp,
        learning_rate=hp.learning_rate or 2e-4,
        learning_rate_schedule=hp.learning_rate_schedule or LearningRateSchedule.LINEAR,
        warmup_ratio=0.0 if hp.warmup_ratio is None else hp.warmup_ratio,
        weight_decay=0.0 if hp.weight_decay is None else hp.weight_decay,
        batch_size=hp.batch_size or 16,
        gradient_accumulation_steps=hp.gradient_accumulation_steps or 1,
        epochs=hp.epochs or (0.0 if hp.max_steps else 1.0),
        max_seq_length=max_len,
        seed=42 if hp.seed is None else hp.seed,
        gradient_checkpointing=bool(hp.gradient_checkpointing),
        max_grad_norm=1.0 if hp.max_grad_norm is None else hp.max_grad_norm,
    )


def resolve_for_device(hp: Hyperparameters, task: TaskType, *, cuda: bool) -> Hyperparameters:
    """Fill the device-dependent defaults once the device is known: bf16 on CUDA and fp32 on
    CPU; packing on for causal LM on CUDA, off otherwise (never for classification)."""
    precision = hp.precision or (Precision.BF16 if cuda else Precision.FP32)
    packing = hp.packing if hp.packing is not None else cuda
    return replace(hp, precision=precision, packing=bool(packing) and task is TaskType.CAUSAL_LM)


def steps_per_epoch(train_examples: int, hp: Hyperparameters) -> int:
    """Optimizer steps in one pass over ``train_examples`` (the last step may be smaller)."""
    per_step = max(1, hp.batch_size) * max(1, hp.gradient_accumulation_steps)
    return max(1, math.ceil(train_examples / per_step))


def planned_steps(train_examples: int, hp: Hyperparameters) -> int:
    """Optimizer steps the job plans: ``epochs`` worth, bounded by ``max_steps``."""
    per_epoch = steps_per_epoch(train_examples, hp)
    by_epochs = math.ceil(hp.epochs * per_epoch) if hp.epochs > 0 else None
    bounds = [b for b in (by_epochs, hp.max_steps or None) if b]
    return max(1, min(bounds)) if bounds else per_epoch


def resolve_stopping(rules: StoppingRules, per_epoch: int) -> StoppingRules:
    """Validate once per epoch and at least every 500 steps unless told otherwise."""
    every = rules.eval_every_n_steps or max(1, min(per_epoch, DEFAULT_MAX_EVAL_INTERVAL))
    return replace(rules, eval_every_n_steps=every)


def resolve_checkpointing(policy: CheckpointPolicy, stopping: StoppingRules) -> CheckpointPolicy:
    """A checkpoint at every validation unless an interval is given."""
    return replace(policy, every_n_steps=policy.every_n_steps or stopping.eval_every_n_steps)


def warmup_steps_for(hp: Hyperparameters, total_steps: int) -> int:
    """Warm-up in steps: ``warmup_steps`` when set, else ``warmup_ratio`` of the total."""
    if hp.warmup_steps is not None:
        return hp.warmup_steps
    return math.ceil((hp.warmup_ratio or 0.0) * total_steps)


# -- rules training follows -----------------------------------------------------------------


def learning_rate_at(
    step: int,
    *,
    peak: float,
    total_steps: int,
    warmup_steps: int,
    schedule: LearningRateSchedule,
) -> float:
    """The learning rate for optimizer step ``step`` (0-based): linear warm-up to ``peak``
    over ``warmup_steps``, then constant, linear or cosine decay to zero at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule is LearningRateSchedule.CONSTANT:
        return peak
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if schedule is LearningRateSchedule.COSINE:
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (1.0 - progress)


@dataclass
class EarlyStopping:
    """Stop after ``patience`` consecutive validations that did not beat the best loss by
    more than ``min_delta``; ``patience == 0`` never stops."""

    patience: int
    min_delta: float = 0.0
    best: float | None = None
    stale: int = 0

    def observe(self, loss: float) -> bool:
        """Record a validation loss; True when it is a new best."""
        if self.best is None or loss < self.best - self.min_delta:
            self.best = loss
            self.stale = 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience


@dataclass(frozen=True)
class KeptCheckpoint:
    """A checkpoint as retention sees it."""

    step: int
    validation_loss: float | None
    is_final: bool = False


def checkpoints_to_delete(kept: Sequence[KeptCheckpoint], keep_best_k: int) -> list[int]:
    """Steps whose artifacts retention deletes: all but the ``keep_best_k`` lowest validation
    losses (checkpoints never validated rank last, ties keep the later step) and the final
    checkpoint. ``keep_best_k == 0`` keeps everything."""
    if keep_best_k <= 0:
        return []
    candidates = [c for c in kept if not c.is_final]
    ranked = sorted(
        candidates,
        key=lambda c: (math.inf if c.validation_loss is None else c.validation_loss, -c.step),
    )
    return sorted(c.step for c in ranked[keep_best_k:])


@dataclass(frozen=True)
class Cost:
    """What a job cost so far."""

    device_seconds: float = 0.0
    tokens_processed: int = 0
    amount: Decimal = Decimal(0)
    currency: str = "USD"
    price_per_device_hour: Decimal = Decimal(0)
    device_type: str = ""
    device_count: int = 1


class LauncherKind(StrEnum):
    """Where a job's ranks run: ``torchrun`` on the trainer's node, or pods in Kubernetes."""

    LOCAL = "local"
    KUBERNETES = "kubernetes"


class KubernetesWorkload(StrEnum):
    """What the Kubernetes launcher submits: an Indexed Job with a headless Service (plain
    Kubernetes), or a Kubeflow Trainer ``TrainJob`` on its torch-distributed runtime."""

    INDEXED_JOB = "indexed_job"
    TRAIN_JOB = "train_job"


class LaunchPhase(StrEnum):
    """A launch's state as the job sees it, from its Kubernetes job and pods."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class KubernetesLaunch:
    """How the Kubernetes launcher runs a job's ranks (the ``TUNELINE_TRAINER_KUBERNETES_*``
    settings): ``nodes`` pods, each a ``torchrun`` of ``world_size / nodes`` ranks."""

    namespace: str
    image: str
    workload: KubernetesWorkload = KubernetesWorkload.INDEXED_JOB
    nodes: int = 1
    #: Kueue ``LocalQueue`` the launch is submitted to (admitted whole: gang scheduling);
    #: empty: no Kueue, the pods are scheduled as they come.
    queue: str = ""
    service_account: str = ""
    #: The PersistentVolumeClaim with the trainer's data folder, mounted at ``data_mount``
    #: (where the plan's model, split and artifact paths point); empty: none.
    data_claim: str = ""
    data_mount: str = ""
    #: The address the pods reach the trainer's relay at, and its port (0: any free one).
    relay_host: str = ""
    relay_port: int = 0
    #: Kubeflow Trainer's runtime a ``TrainJob`` refers to.
    runtime: str = "torch-distributed"


class Sharding(StrEnum):
    """How a job's ranks hold the base model: whole on each (data-parallel), or its frozen
    weights split across them (fully sharded, for a model one device cannot hold)."""

    DATA_PARALLEL = "data_parallel"
    FULLY_SHARDED = "fully_sharded"


def device_slots(devices: Sequence[str], ranks_per_job: int) -> list[str]:
    """The slots jobs run in, one job per slot. One device each; for data-parallel jobs of
    ``ranks_per_job`` ranks, that many CUDA devices per slot (``cuda:0,cuda:1``; devices left
    over run nothing), while the CPU stays one slot its ranks share."""
    if ranks_per_job <= 1:
        return list(devices)
    cuda = [device for device in devices if device.startswith("cuda")]
    slots = [
        ",".join(cuda[start : start + ranks_per_job])
        for start in range(0, len(cuda) - ranks_per_job + 1, ranks_per_job)
    ]
    return slots + [device for device in devices if not device.startswith("cuda")]


def devices_in(slot: str) -> int:
    """How many devices a job's device slot holds: ``cuda:0`` one, ``cuda:0,cuda:1`` two (a
    data-parallel job's ranks, one per device); ``cpu`` one, however many processes share it."""
    return max(1, sum(1 for device in slot.split(",") if device.strip()))


def compute_cost(
    *,
    device_seconds: float,
    tokens_processed: int,
    price_per_device_hour: Decimal,
    currency: str,
    device_type: str,
    device_count: int = 1,
) -> Cost:
    """``device_seconds`` (already summed over devices) priced per device-hour, rounded to
    nano-units (the contracts' Money precision)."""
    amount = (Decimal(repr(device_seconds)) / Decimal(3600) * price_per_device_hour).quantize(
        Decimal("1e-9"), rounding=ROUND_HALF_EVEN
    )
    return Cost(
        device_seconds=device_seconds,
        tokens_processed=tokens_processed,
        amount=amount,
        currency=currency,
        price_per_device_hour=price_per_device_hour,
        device_type=device_type,
        device_count=device_count,
    )


@dataclass(frozen=True)
class ThroughputSample:
    """What one finished run processed, how long it took, and on what: an estimate's basis.
    ``device_seconds`` is every attempt, whole (starting the worker, loading the model and
    data, the loop); ``training_seconds`` the loop, validations and checkpoint writes
    included; ``tokens_processed`` the train tokens the loop drew, ``validation_tokens`` those
    its validations read (rows x evaluations x mean tokens per row; 0: not known)."""

    tokens_processed: int
    device_seconds: float
    training_seconds: float
    device_type: str
    validation_tokens: int = 0
    attempts: int = 1


@dataclass(frozen=True)
class TrainingEstimate:
    """What a job is expected to process and cost before it runs (see the proto)."""

    train_examples: int
    train_tokens: int
    planned_steps: int
    estimated_tokens: int
    tokens_per_device_second: float
    overhead_device_seconds: float
    measured_runs: int
    device_type: str
    cost: Cost
    #: Tokens the planned validations read (0 for jobs estimated before this was counted).
    estimated_validation_tokens: int = 0


@dataclass(frozen=True)
class Budget:
    """Spending limits in ``currency``; None: no limit."""

    currency: str = ""
    per_run: Decimal | None = None
    per_month: Decimal | None = None

    @property
    def limited(self) -> bool:
        return self.per_run is not None or self.per_month is not None


@dataclass(frozen=True)
class BudgetHolder:
    """A budget and whose it is: ``models/{m}`` (from the registry) or ``trainingPolicies/{p}``."""

    holder: str
    budget: Budget


@dataclass(frozen=True)
class BudgetBreach:
    """One limit a job would exceed: ``limit`` is ``max_cost_per_run`` or
    ``max_cost_per_month``."""

    holder: str
    limit: str
    description: str


def _tighter(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def effective_budget(holders: Sequence[BudgetHolder], currency: str) -> Budget:
    """Per limit, the tightest of the holders' budgets (all in ``currency``)."""
    per_run: Decimal | None = None
    per_month: Decimal | None = None
    for held in holders:
        per_run = _tighter(per_run, held.budget.per_run)
        per_month = _tighter(per_month, held.budget.per_month)
    return Budget(currency=currency, per_run=per_run, per_month=per_month)


def budget_breaches(
    holders: Sequence[BudgetHolder],
    *,
    estimated_cost: Decimal,
    month_to_date: Mapping[str, Decimal],
    currency: str,
) -> list[BudgetBreach]:
    """Every limit a job estimated at ``estimated_cost`` would exceed: a per-run limit below the
    estimate, or a monthly limit below what the holder's jobs of this month already cost or
    have committed (``month_to_date[holder]``) plus the estimate. A budget in another currency
    than the trainer prices in cannot be compared: it is a breach too, saying so."""
    breaches: list[BudgetBreach] = []
    for held in holders:
        budget = held.budget
        if not budget.limited:
            continue
        if budget.currency != currency:
            breaches.append(
                BudgetBreach(
                    held.holder,
                    "currency_code",
                    f"the budget is in {budget.currency}, the trainer prices in {currency}",
                )
            )
            continue
        if budget.per_run is not None and estimated_cost > budget.per_run:
            breaches.append(
                BudgetBreach(
                    held.holder,
                    "max_cost_per_run",
                    f"the run is estimated at {currency} {estimated_cost:.2f}, over the per-run "
                    f"budget of {currency} {budget.per_run:.2f}",
                )
            )
        spent = month_to_date.get(held.holder, Decimal(0))
        if budget.per_month is not None and spent + estimated_cost > budget.per_month:
            breaches.append(
                BudgetBreach(
                    held.holder,
                    "max_cost_per_month",
                    f"this month's runs cost or committed {currency} {spent:.2f}; with this "
                    f"run's estimated {currency} {estimated_cost:.2f} that is over the monthly "
                    f"budget of {currency} {budget.per_month:.2f}",
                )
            )
    return breaches


def budget_exhausted(budget: Budget, cost: Cost) -> bool:
    """A running job's cost has reached its per-run budget."""
    return (
        budget.per_run is not None
        and budget.currency == cost.currency
        and cost.amount >= budget.per_run
    )


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


def month_start(now: datetime) -> datetime:
    """The first instant of ``now``'s calendar month (in ``now``'s time zone, UTC here)."""
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def examples_processed(train_examples: int, total_steps: int, hp: Hyperparameters) -> int:
    """Train examples the planned steps draw, every pass counted (the last step of an epoch
    takes what is left of it)."""
    per_step = max(1, hp.batch_size) * max(1, hp.gradient_accumulation_steps)
    per_epoch = steps_per_epoch(train_examples, hp)
    full_epochs, rest = divmod(total_steps, per_epoch)
    return full_epochs * train_examples + min(rest * per_step, train_examples)


#: What reading a validation token costs next to training on one: a forward pass against a
#: forward and a backward pass (about 2 of 6 FLOPs per parameter and token).
VALIDATION_TOKEN_WEIGHT = 1 / 3


def evaluations_planned(total_steps: int, eval_every_n_steps: int) -> int:
    """Validations a run of ``total_steps`` makes: at every multiple of ``eval_every_n_steps``
    and at its last step."""
    if total_steps <= 0:
        return 0
    every = max(1, eval_every_n_steps)
    return total_steps // every + (1 if total_steps % every else 0)


def work_tokens(train_tokens: float, validation_tokens: float) -> float:
    """A run's work in train-token equivalents: its validations weighed at
    :data:`VALIDATION_TOKEN_WEIGHT`."""
    return train_tokens + VALIDATION_TOKEN_WEIGHT * validation_tokens


@dataclass(frozen=True)
class DeviceTimeModel:
    """``device_seconds = fixed_seconds + work / work_per_second`` (work in train-token
    equivalents, see :func:`work_tokens`), and how many runs measured it (0: the defaults)."""

    fixed_seconds: float
    work_per_second: float
    measured_runs: int
    device_type: str


def fit_device_time(
    samples: Sequence[ThroughputSample],
    *,
    default_work_per_second: float,
    default_fixed_seconds: float,
) -> DeviceTimeModel:
    """Device time as fixed time plus work, from ``samples`` (earlier runs of one base model,
    oldest first), of which those on the newest one's device type count, and of those the
    runs that went through in one attempt when there are any (a resumed run paid for a second
    start and for the steps it redid since its checkpoint).

    The rate: their work over their training loops' time, pooled. The fixed time: the newest
    run's time outside its loop (starting the worker, importing the training stack, loading
    model and data). Not a median or a regression over all runs: the first run after the
    machine or the trainer started reads everything from a cold disk, and its start took 10
    to 17 times a later one's in the measured runs (61.5 s against 6.1 s and 3.5 s for
    tiny-bert), which a fit over every run would keep charging to warm runs; the loop itself
    is not slowed by it. No run: ``default_work_per_second`` (deliberately low) and
    ``default_fixed_seconds``."""
    usable = [
        s
        for s in samples
        if s.tokens_processed > 0 and s.training_seconds > 0 and s.device_seconds > 0
    ]
    if not usable:
        return DeviceTimeModel(default_fixed_seconds, default_work_per_second, 0, "")
    device_type = usable[-1].device_type
    on_device = [s for s in usable if s.device_type == device_type]
    basis = [s for s in on_device if s.attempts <= 1] or on_device
    work = sum(work_tokens(s.tokens_processed, s.validation_tokens) for s in basis)
    rate = work / sum(s.training_seconds for s in basis)
    newest = basis[-1]
    fixed = max(0.0, newest.device_seconds - newest.training_seconds)
    return DeviceTimeModel(fixed, rate, len(basis), device_type)


def estimate_training(
    *,
    train_examples: int,
    train_tokens: int,
    total_steps: int,
    hp: Hyperparameters,
    samples: Sequence[ThroughputSample],
    default_tokens_per_device_second: float,
    price_per_device_hour: Decimal,
    currency: str,
    validation_examples: int = 0,
    eval_every_n_steps: int = 0,
    default_overhead_device_seconds: float = 0.0,
) -> TrainingEstimate:
    """Tokens from the data: its mean tokens per train row times the rows the planned steps
    draw; the validations read ``validation_examples`` rows of the same mean length at each of
    the planned evaluations. Device time from :func:`fit_device_time` on ``samples``; cost at
    the price. ``tokens_per_device_second`` is the fitted work rate (train-token equivalents)."""
    drawn = examples_processed(train_examples, total_steps, hp)
    tokens = round(train_tokens * drawn / train_examples) if train_examples else 0
    per_row = train_tokens / train_examples if train_examples else 0.0
    validation_tokens = (
        round(per_row * validation_examples * evaluations_planned(total_steps, eval_every_n_steps))
        if eval_every_n_steps > 0
        else 0
    )
    model = fit_device_time(
        samples,
        default_work_per_second=default_tokens_per_device_second,
        default_fixed_seconds=default_overhead_device_seconds,
    )
    return TrainingEstimate(
        train_examples=train_examples,
        train_tokens=train_tokens,
        planned_steps=total_steps,
        estimated_tokens=tokens,
        tokens_per_device_second=model.work_per_second,
        overhead_device_seconds=model.fixed_seconds,
        measured_runs=model.measured_runs,
        device_type=model.device_type,
        estimated_validation_tokens=validation_tokens,
        cost=compute_cost(
            device_seconds=model.fixed_seconds
            + work_tokens(tokens, validation_tokens) / model.work_per_second,
            tokens_processed=tokens,
            price_per_device_hour=price_per_device_hour,
            currency=currency,
            device_type=model.device_type,
        ),
    )


def estimate_eta_seconds(step: int, total_steps: int, seconds_per_step: float) -> float | None:
    """Seconds to ``total_steps`` at the recent pace; None before there is a pace."""
    if step <= 0 or seconds_per_step <= 0 or total_steps <= step:
        return None if total_steps > step else 0.0
    return (total_steps - step) * seconds_per_step


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


def jsonable(value: Any) -> Any:  # noqa: PLR0911 - one return per kind of value
    """A domain value as JSON-compatible data (enums by value, Decimals as strings)."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {k: jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    return value


def from_jsonable(cls: type[Any], data: Mapping[str, Any]) -> Any:
    """The inverse of :func:`jsonable` for a dataclass ``cls`` (fields missing from ``data``
    keep their defaults, unknown keys are ignored)."""
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _decode(hints[name], data[name]) for name in cls.__dataclass_fields__ if name in data
    }
    return cls(**kwargs)


def _decode(annotation: Any, value: Any) -> Any:  # noqa: PLR0911 - one return per kind of value
    if value is None:
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _decode(next(a for a in args if a is not type(None)), value)
    if origin is tuple:
        return tuple(_decode(args[0], v) for v in value)
    if origin is list:
        return [_decode(args[0], v) for v in value]
    if origin in (dict, abc.Mapping):
        return {k: _decode(args[1], v) for k, v in value.items()}
    if isinstance(annotation, type):
        if issubclass(annotation, StrEnum):
            return annotation(value)
        if annotation is Decimal:
            return Decimal(value)
        if annotation is datetime:
            return datetime.fromisoformat(value)
        if annotation is float:
            return float(value)
        if hasattr(annotation, "__dataclass_fields__"):
            return from_jsonable(annotation, value)
    return value
