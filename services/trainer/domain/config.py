"""A job's configuration: what it trains and how, with the contracts' "zero means default"
convention.

:class:`JobConfig` (:class:`BaseModelRef`, :class:`AdapterSpec`, :class:`Hyperparameters`,
:class:`StoppingRules`, :class:`CheckpointPolicy`), the per-architecture defaults, the
validation that lists every violation with its field path (:func:`validate_job_config`) and the
``resolve_*`` functions that make every default explicit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from shared.errors import FieldViolation
from shared.task_types import TaskType

#: peft matches target modules by name suffix; a name is dotted identifiers.
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")

MAX_RANK = 1024
MAX_DISPLAY_NAME = 200
#: Longest default sequence: the model's limit, capped here (the contracts' default).
DEFAULT_MAX_SEQ_LENGTH_CAP = 512
#: Validate at least this often when no interval is given (the contracts' default).
DEFAULT_MAX_EVAL_INTERVAL = 500


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
