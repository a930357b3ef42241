"""What a worker prepares before its training loop (imports torch): the split's rows encoded
for the model (:func:`prepare_data`), and the base model with its adapter on the device
(:func:`build_model`, with the attention kernel :func:`attention_for` picks)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from services.trainer.adapters.engine.attention import (
    VARLEN_ATTENTION,
    register_varlen_attention,
    varlen_attention_available,
)
from services.trainer.adapters.engine.signals import TrainingFailure
from services.trainer.domain.config import (
    AdapterMethod,
    Hyperparameters,
    Precision,
    target_modules_for,
)
from services.trainer.domain.jobs import (
    EngineFallback,
    FailureReason,
    RowSkipReason,
    SkippedRows,
)
from services.trainer.domain.worker_messages import WorkerPlan
from shared.modeling import (
    DataUnavailable,
    EncodedExample,
    EncodedRows,
    FolderHashCache,
    ModelLoadFailed,
    ResolvedModel,
    check_model_folder,
    encode_dataset_rows,
    load_split_rows,
)
from shared.modeling.loading import load_base_model, load_tokenizer
from shared.modeling.tokenizer_fingerprint import (
    TokenizerFingerprintRecord,
    fingerprint_tokenizer,
)
from shared.task_types import TaskType

#: Row ids a skip report names, per reason (the count covers them all).
_SKIPPED_IDS_SHOWN = 10

log = logging.getLogger(__name__)

#: The torch dtype of each precision (weights on CUDA, and the loop's autocast).
PRECISION_DTYPES = {
    Precision.FP32: torch.float32,
    Precision.BF16: torch.bfloat16,
    Precision.FP16: torch.float16,
}


@dataclass
class TrainingData:
    """Encoded examples of a split and what encoding needed."""

    train: list[EncodedExample]
    validation: list[EncodedExample]
    labels: list[str]
    pad_token_id: int
    #: Rows of train and validation left out, by reason.
    skipped: tuple[SkippedRows, ...] = ()
    #: The tokenizer as trained with (recorded with every checkpoint).
    tokenizer_fingerprint: TokenizerFingerprintRecord | None = None


def _skipped_rows(*parts: EncodedRows) -> tuple[SkippedRows, ...]:
    by_reason: dict[str, list[str]] = {}
    for part in parts:
        for reason, row_ids in part.skipped.items():
            by_reason.setdefault(reason.value, []).extend(row_ids)
    return tuple(
        SkippedRows(RowSkipReason(reason), len(ids), tuple(ids[:_SKIPPED_IDS_SHOWN]))
        for reason, ids in sorted(by_reason.items())
    )


def prepare_data(plan: WorkerPlan, max_length: int) -> TrainingData:
    """Read the split and encode its train and validation rows with the model's tokenizer.

    Rows encoding cannot use (a conversation the chat template cannot mask, a row truncation
    leaves nothing to learn from) are left out and reported, with a warning; the job fails
    only when no train row is left."""
    rows = load_split_rows(
        Path(plan.manifest_path),
        Path(plan.dataset_path),
        expected_manifest_sha256=plan.manifest_sha256 or None,
    )
    tokenizer = load_tokenizer(Path(plan.model_dir))
    task = plan.task_type.value
    if plan.task_type is TaskType.CLASSIFICATION and len(rows.labels) < 2:
        raise DataUnavailable(f"classification needs at least two labels, found {rows.labels}")
    train = encode_dataset_rows(
        tokenizer, rows.train, task, max_length=max_length, labels=rows.labels
    )
    validation = encode_dataset_rows(
        tokenizer, rows.validation, task, max_length=max_length, labels=rows.labels
    )
    skipped = _skipped_rows(train, validation)
    for skip in skipped:
        log.warning(
            "rows left out of training",
            extra={
                "reason": skip.reason.value,
                "rows": skip.count,
                "row_ids": skip.example_row_ids,
            },
        )
    if not train.examples:
        reasons = ", ".join(f"{s.count} {s.reason.value}" for s in skipped) or "none skipped"
        raise DataUnavailable(
            f"the split's train part has no row that can be trained on ({reasons})"
        )
    fingerprint = fingerprint_tokenizer(
        tokenizer,
        name=plan.base_model.model_name or Path(plan.model_dir).name,
        max_sequence_length=max_length,
        model_dir=Path(plan.model_dir),
    )
    return TrainingData(
        train.examples,
        validation.examples,
        rows.labels,
        int(tokenizer.pad_token_id),
        skipped,
        fingerprint,
    )


def _resolved_model(plan: WorkerPlan) -> ResolvedModel:
    base = plan.base_model
    return ResolvedModel(
        path=Path(plan.model_dir),
        files_sha256=base.files_sha256,
        model_type=base.model_type,
        architecture=base.architecture,
        model_name=base.model_name,
        model_path=base.model_path,
    )


def check_model_unchanged(plan: WorkerPlan) -> None:
    """The model folder is still safe and still the files the job was created with."""
    folder = Path(plan.model_dir)
    check_model_folder(folder, [folder])
    actual = FolderHashCache().sha256(folder)
    if actual != plan.base_model.files_sha256:
        raise ModelLoadFailed(
            f"the files of {folder} changed since the job was created "
            f"(files_sha256 {actual}, the job recorded {plan.base_model.files_sha256})"
        )


def build_model(
    plan: WorkerPlan,
    hp: Hyperparameters,
    data: TrainingData,
    device: torch.device,
    attn_implementation: str | None,
    *,
    load_device: torch.device | None = None,
) -> PeftModel:
    """The base model for the task with the plan's LoRA-family adapter on it, trainable
    parameters in fp32 (base weights in bf16/fp16 on CUDA when that precision is asked).
    The base loads on ``load_device`` when given (fully sharded: the CPU, whence only each
    rank's shards go to ``device``)."""
    assert hp.precision is not None
    assert hp.seed is not None
    weights_dtype = PRECISION_DTYPES[hp.precision] if device.type == "cuda" else torch.float32
    torch.manual_seed(hp.seed)
    base = load_base_model(
        _resolved_model(plan),
        plan.task_type.value,
        labels=data.labels,
        pad_token_id=data.pad_token_id,
        device=load_device or device,
        dtype=weights_dtype,
        attn_implementation=attn_implementation,
        head_seed=hp.seed,
    )
    if hp.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.config.use_cache = False
    adapter = plan.adapter
    targets = target_modules_for(adapter, plan.base_model.model_type)
    if targets is None:
        raise TrainingFailure(
            FailureReason.MODEL_LOAD_FAILED,
            f"no default target modules for model type {plan.base_model.model_type!r}",
        )
    config = LoraConfig(
        task_type="SEQ_CLS" if plan.task_type is TaskType.CLASSIFICATION else "CAUSAL_LM",
        r=adapter.rank,
        lora_alpha=adapter.alpha,  # type: ignore[arg-type]  # peft takes any number
        lora_dropout=adapter.dropout or 0.0,
        target_modules=targets if isinstance(targets, str) else list(targets),
        modules_to_save=list(adapter.modules_to_save) or None,
        use_dora=adapter.method is AdapterMethod.DORA,
        use_rslora=adapter.method is AdapterMethod.RSLORA,
    )
    try:
        model = get_peft_model(base, config)
    except ValueError as error:  # e.g. target modules the model does not have
        raise TrainingFailure(
            FailureReason.MODEL_LOAD_FAILED, f"cannot attach the adapter: {error}"
        ) from error
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model


def attention_for(
    plan: WorkerPlan, hp: Hyperparameters, device: torch.device
) -> tuple[str | None, EngineFallback | None]:
    """(:data:`VARLEN_ATTENTION`, None) when packing on a CUDA device whose kernel works;
    (None, why not) when packing was asked for on CUDA but cannot use it; (None, None) when
    packing was not asked for there."""
    if not hp.packing or device.type != "cuda":
        return None, None
    config = json.loads((Path(plan.model_dir) / "config.json").read_text())
    heads = int(config.get("num_attention_heads", 0))
    if not heads:
        return None, EngineFallback(
            "packing", "no_attention_heads", "config.json has no num_attention_heads"
        )
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    assert hp.precision is not None
    probe = varlen_attention_available(
        device, PRECISION_DTYPES[hp.precision], heads=heads, kv_heads=kv_heads, head_dim=head_dim
    )
    if not probe:
        return None, EngineFallback("packing", probe.reason, probe.detail)
    register_varlen_attention()
    return VARLEN_ATTENTION, None
