"""Merged versus unmerged: the numbers of the parity check, and the merged release model
(imports torch: worker and bench only).

The candidate is loaded twice from its folder: once in fp32 — its logits, then
``merge_and_unload`` and the merged model's logits on the same examples (max |Δlogit|; the
merged fp32 model is what is written as the release artifact) — and once in bf16, unmerged and
then merged, for agreement: of predicted labels (classification) or of greedy next tokens at
every completion position, teacher-forced (causal LM). Engines serve in bf16; a merge that
flips labels or tokens there is the drift peft users report.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from services.evaluator.adapters.parity_job import ParityMeasured
from services.evaluator.adapters.scoring import ScoringJob, SubjectRole
from services.evaluator.domain.parity import AdapterFacts, ParityMeasurement, TokenizerFacts
from shared.modeling import (
    ADAPTER_CONFIG_FILE,
    IGNORE_INDEX,
    AdapterMetadata,
    EncodedExample,
    FolderHashCache,
    Row,
    encode_rows,
    read_adapter_metadata,
    resolve_base_model,
)
from shared.modeling.batching import pad_batch
from shared.modeling.errors import ModelingError, ModelLoadFailed
from shared.modeling.loading import load_adapter, load_base_model, load_tokenizer
from shared.modeling.tokenizer_fingerprint import (
    TokenizerFingerprintRecord,
    fingerprint_tokenizer,
    tokenizer_fingerprint_from_extra,
)
from shared.task_types import TaskType

#: What the merged release folder says about itself, beside the model's own files.
RELEASE_METADATA_FILE = "tuneline_release.json"


def adapter_facts(adapter_dir: Path, metadata: AdapterMetadata) -> AdapterFacts:
    """Rank, DoRA and ``modules_to_save`` from PEFT's ``adapter_config.json``."""
    config = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    return AdapterFacts(
        rank=int(config.get("r") or 0),
        use_dora=bool(config.get("use_dora")),
        modules_to_save=tuple(config.get("modules_to_save") or ()),
        max_sequence_length=int(metadata.max_seq_length),
    )


def tokenizer_facts(record: TokenizerFingerprintRecord) -> TokenizerFacts:
    return TokenizerFacts(
        tokenizer_name=record.tokenizer_name,
        tokenizer_sha256=record.tokenizer_sha256,
        chat_template_sha256=record.chat_template_sha256,
        end_of_turn_token_ids=record.end_of_turn_token_ids,
        max_sequence_length=record.max_sequence_length,
    )


def _compared_logits(
    model: Any,
    examples: Sequence[EncodedExample],
    *,
    task: TaskType,
    pad_id: int,
    device: torch.device,
    batch_size: int,
) -> list[torch.Tensor]:
    """Logits at the positions that matter: each example's class logits, or every completion
    position's next-token logits (the position before each target token)."""
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = pad_batch(list(examples[start : start + batch_size]), pad_id).to(device)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            if task is TaskType.CLASSIFICATION:
                out.append(logits.float().cpu())
            else:
                targets = batch.labels[:, 1:] != IGNORE_INDEX
                out.append(logits[:, :-1][targets].float().cpu())
    return out


def _load(
    adapter_dir: Path,
    metadata: AdapterMetadata,
    *,
    models_root: Path,
    allowed_roots: Sequence[Path],
    device: torch.device,
    dtype: torch.dtype,
    hashes: FolderHashCache,
) -> tuple[Any, Any]:
    base = resolve_base_model(
        model_name=metadata.base_model_name,
        model_path=metadata.base_model_path,
        models_root=models_root,
        allowed_roots=allowed_roots,
        hashes=hashes,
    )
    if metadata.base_model_files_sha256 and base.files_sha256 != metadata.base_model_files_sha256:
        raise ModelLoadFailed(
            f"base model files_sha256 {base.files_sha256} is not the adapter's "
            f"{metadata.base_model_files_sha256}"
        )
    tokenizer = load_tokenizer(base.path)
    bare = load_base_model(
        base,
        metadata.task,
        labels=metadata.labels,
        pad_token_id=tokenizer.pad_token_id,
        device=device,
        dtype=dtype,
    )
    return load_adapter(bare, adapter_dir), tokenizer


def recorded_fingerprint(
    metadata: AdapterMetadata, tokenizer: Any, base_dir: Path | None
) -> TokenizerFingerprintRecord:
    """The fingerprint the trainer wrote into the folder; recomputed for older folders."""
    return tokenizer_fingerprint_from_extra(metadata.extra) or fingerprint_tokenizer(
        tokenizer,
        name=metadata.base_model_name or (base_dir.name if base_dir else ""),
        max_sequence_length=metadata.max_seq_length,
        model_dir=base_dir,
    )


def _write_release(
    merged: Any, tokenizer: Any, out: Path, metadata: AdapterMetadata, adapter_sha256: str
) -> None:
    """The merged model as a plain safetensors model folder any engine loads."""
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    release = {
        "adapter_sha256": adapter_sha256,
        "base_model_files_sha256": metadata.base_model_files_sha256,
        "base_model_name": metadata.base_model_name,
        "labels": list(metadata.labels),
        "max_seq_length": metadata.max_seq_length,
        "task_type": metadata.task_type,
    }
    text = json.dumps(release, sort_keys=True, indent=2) + "\n"
    (out / RELEASE_METADATA_FILE).write_text(text, encoding="utf-8")


def measure_parity(
    adapter_dir: Path,
    rows: Sequence[Row],
    *,
    models_root: Path,
    allowed_roots: Sequence[Path] = (),
    device: torch.device,
    max_examples: int,
    batch_size: int = 16,
    merged_output_dir: Path | None = None,
    adapter_sha256: str = "",
    hashes: FolderHashCache | None = None,
) -> ParityMeasured:
    """Merged versus unmerged on the first ``max_examples`` usable rows (see the module doc)."""
    hashes = hashes or FolderHashCache()
    metadata = read_adapter_metadata(adapter_dir)
    facts = adapter_facts(adapter_dir, metadata)
    task = metadata.task

    def load(dtype: torch.dtype) -> tuple[Any, Any]:
        return _load(
            adapter_dir,
            metadata,
            models_root=models_root,
            allowed_roots=allowed_roots,
            device=device,
            dtype=dtype,
            hashes=hashes,
        )

    model, tokenizer = load(torch.float32)
    base_dir = Path(getattr(tokenizer, "name_or_path", "") or "") or None
    fingerprint = tokenizer_facts(recorded_fingerprint(metadata, tokenizer, base_dir))
    examples = encode_rows(
        tokenizer, list(rows), task, max_length=metadata.max_seq_length, labels=metadata.labels
    )[:max_examples]
    if not examples:
        return ParityMeasured(facts, fingerprint, None, "no usable example to compare on")
    pad_id = int(tokenizer.pad_token_id)

    def logits_of(subject: Any) -> list[torch.Tensor]:
        return _compared_logits(
            subject, examples, task=task, pad_id=pad_id, device=device, batch_size=batch_size
        )

    unmerged = logits_of(model)
    merged_model = model.merge_and_unload()
    merged = logits_of(merged_model)
    delta = max(float((u - m).abs().max()) for u, m in zip(unmerged, merged, strict=True))
    merged_dir = ""
    if merged_output_dir is not None:
        _write_release(merged_model, tokenizer, merged_output_dir, metadata, adapter_sha256)
        merged_dir = str(merged_output_dir)
    del model, merged_model, unmerged, merged
    low, _ = load(torch.bfloat16)
    unmerged_bf16 = logits_of(low)
    merged_bf16 = logits_of(low.merge_and_unload())
    agreeing = compared = 0
    for u, m in zip(unmerged_bf16, merged_bf16, strict=True):
        agreeing += int((u.argmax(dim=-1) == m.argmax(dim=-1)).sum())
        compared += int(u.shape[0])
    measurement = ParityMeasurement(
        fp32_max_abs_logit_delta=delta,
        bf16_agreement=agreeing / compared if compared else 0.0,
        bf16_compared_count=compared,
        example_count=len(examples),
    )
    return ParityMeasured(facts, fingerprint, measurement, merged_dir=merged_dir)


def parity_for_job(
    job: ScoringJob, rows: dict[str, list[Row]], device: torch.device, hashes: FolderHashCache
) -> ParityMeasured | None:
    """The parity ``job.parity`` asks for, measured on the job's candidate."""
    request = job.parity
    candidate = next((s for s in job.subjects if s.role is SubjectRole.CANDIDATE), None)
    if request is None or candidate is None or not candidate.adapter_path:
        return None
    adapter_dir = Path(candidate.adapter_path)
    if request.max_examples <= 0:
        return _unmeasured(adapter_dir, "the parity check is configured with 0 examples")
    try:
        return measure_parity(
            adapter_dir,
            rows[request.set_key],
            models_root=Path(job.models_root),
            allowed_roots=[Path(r) for r in job.allowed_roots],
            device=device,
            max_examples=request.max_examples,
            batch_size=max(1, min(job.batch_size, 16)),
            merged_output_dir=Path(request.merged_output_dir)
            if request.merged_output_dir
            else None,
            adapter_sha256=request.adapter_sha256,
            hashes=hashes,
        )
    except (ModelingError, ValueError, RuntimeError, OSError) as error:
        # the candidate was scored, so it loads: what broke is the merge (or writing it)
        if request.merged_output_dir:
            shutil.rmtree(Path(request.merged_output_dir).parent, ignore_errors=True)
        return _unmeasured(adapter_dir, f"merging the adapter failed: {error}"[:500])


def _unmeasured(adapter_dir: Path, reason: str) -> ParityMeasured:
    """The adapter's facts without numbers (the lint and fingerprint parts still run)."""
    metadata = read_adapter_metadata(adapter_dir)
    recorded = tokenizer_fingerprint_from_extra(metadata.extra)
    return ParityMeasured(
        adapter_facts(adapter_dir, metadata),
        tokenizer_facts(recorded) if recorded else TokenizerFacts(),
        None,
        skipped_reason=reason,
    )
