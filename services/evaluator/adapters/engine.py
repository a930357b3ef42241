"""The evaluation engine: scores models on evaluation sets, example by example (imports torch).

With :mod:`shared.modeling` this is the evaluator's only torch code; it runs in the worker
process (:mod:`.worker`), never in the service process. For each subject of a
:class:`~.scoring.ScoringJob` it loads the base model (safetensors only, remote code never
trusted) plus the adapter, encodes every row exactly as training did
(:func:`shared.modeling.encode_rows`), and keeps what the gate needs per example:

* classification — the cross-entropy of the true label, the predicted label;
* causal_lm — the cross-entropy summed over the completion tokens, how many completion tokens
  the argmax got right, and for a bounded, deterministic subset of examples (the first
  ``max_generation_examples`` by sha256 of their id, so the subset is spread over the set and
  identical for every model) whether greedy generation of at most ``max_new_tokens`` tokens
  equals the completion (after collapsing whitespace). Generation stops at every end-of-turn
  id: the generation config's, the tokenizer's EOS, and the chat template's end-of-turn token
  (``<|im_end|>`` …), so a chat model's answer ends where its turn does; the generated answer's
  word-overlap F1 and ROUGE-L against the completion, and, for rows that declare a
  ``json_schema``, whether it is JSON the schema accepts (:mod:`.text_metrics`).

When the job asks (:class:`~.scoring.DataChecksJob`), the primary set is also compared with the
candidate's training rows: contamination, coverage and shift (:mod:`.data_checks`).

Speed: examples are sorted by length and cut into batches of at most ``batch_size`` examples
and ``max_batch_tokens`` padded tokens, so little compute goes to padding; every forward pass
runs under ``torch.inference_mode``; weights are bf16 on CUDA, fp32 on CPU, and losses are
computed in fp32. Row ``weight`` does not weigh evaluation metrics (every example counts once).
"""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from services.evaluator.adapters.data_checks import run_data_checks
from services.evaluator.adapters.parity import parity_for_job
from services.evaluator.adapters.scoring import (
    RowSource,
    ScoringFailed,
    ScoringJob,
    ScoringResult,
    SubjectRole,
    SubjectSpec,
)
from services.evaluator.adapters.text_metrics import json_valid, rouge_l, token_f1
from services.evaluator.domain.data_checks import DataChecks, skipped
from services.evaluator.domain.evaluation import FailureReason, ScoringConditions
from services.evaluator.domain.outcomes import (
    CausalLMOutcomes,
    ClassificationOutcomes,
    ExampleOutcomes,
    FloatArray,
)
from shared.modeling import (
    IGNORE_INDEX,
    DataUnavailable,
    EncodedExample,
    FolderHashCache,
    ModelingError,
    Row,
    check_adapter_folder,
    classification_labels,
    encode_rows,
    generation_prompt,
    load_split_rows,
    read_adapter_metadata,
    read_canonical_rows,
    resolve_base_model,
)
from shared.modeling.batching import pad_batch
from shared.modeling.loading import (
    default_dtype,
    load_adapter,
    load_base_model,
    load_tokenizer,
    resolve_device,
)
from shared.modeling.tokenizer_fingerprint import end_of_turn_token_ids
from shared.task_types import TaskType


@dataclass
class LoadedSubject:
    """A model ready to score, with its tokenizer and (classification) its label order."""

    model: torch.nn.Module
    tokenizer: Any
    labels: tuple[str, ...]
    max_length: int
    #: The base model's folder (its ``generation_config.json`` names end-of-turn ids too).
    model_dir: Path | None = None


# -- reading rows -----------------------------------------------------------------------------


def read_rows(source: RowSource) -> list[Row]:
    """The rows of one evaluation set, digests checked; :class:`ScoringFailed` if unusable."""
    try:
        if source.manifest_path:
            parts = load_split_rows(
                Path(source.manifest_path),
                Path(source.dataset_path),
                expected_manifest_sha256=source.manifest_sha256 or None,
            )
            rows: list[Row] = getattr(parts, source.part)
        else:
            rows = read_canonical_rows(
                Path(source.dataset_path), expected_sha256=source.dataset_sha256 or None
            )
    except DataUnavailable as error:
        raise ScoringFailed(FailureReason.DATA_UNAVAILABLE, str(error)) from error
    if not rows:
        raise ScoringFailed(
            FailureReason.DATA_UNAVAILABLE, f"the evaluation set {source.set_key} has no rows"
        )
    return rows


# -- loading models ---------------------------------------------------------------------------


def _max_length(model: torch.nn.Module, wanted: int) -> int:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(wanted, int(limit)) if isinstance(limit, int) and limit > 0 else wanted


@contextmanager
def _failing_as(reason: FailureReason, what: str) -> Iterator[None]:
    try:
        yield
    except ModelingError as error:
        raise ScoringFailed(reason, f"{what}: {error}") from error


def load_subject(
    subject: SubjectSpec,
    job: ScoringJob,
    device: torch.device,
    hashes: FolderHashCache,
    *,
    labels: Sequence[str] = (),
) -> LoadedSubject:
    """Load ``subject`` for ``job``'s task; ``labels`` is the class order of a bare base model.

    Failures say whose they are: the candidate's or baseline's adapter
    (CHECKPOINT_UNAVAILABLE / BASELINE_UNAVAILABLE) or the base model (MODEL_LOAD_FAILED).
    """
    adapter_reason = (
        FailureReason.CHECKPOINT_UNAVAILABLE
        if subject.role is SubjectRole.CANDIDATE
        else FailureReason.BASELINE_UNAVAILABLE
    )
    task = job.task_type
    roots = [Path(r) for r in job.allowed_roots]
    models_root = Path(job.models_root)
    adapter_dir = Path(subject.adapter_path) if subject.adapter_path else None
    if adapter_dir is not None:
        with _failing_as(adapter_reason, f"the {subject.role.value}'s adapter"):
            check_adapter_folder(adapter_dir)
            metadata = read_adapter_metadata(adapter_dir)
        if metadata.task is not task:
            raise ScoringFailed(
                adapter_reason,
                f"the {subject.role.value}'s adapter is for {metadata.task.value}, "
                f"not {task.value}",
            )
        name, path = metadata.base_model_name, metadata.base_model_path
        expected_sha256, labels = metadata.base_model_files_sha256, metadata.labels
    else:
        name, path = subject.base_model.model_name, subject.base_model.model_path
        expected_sha256 = subject.base_model.files_sha256
    with _failing_as(FailureReason.MODEL_LOAD_FAILED, "the base model"):
        base = resolve_base_model(
            model_name=name,
            model_path=path,
            models_root=models_root,
            allowed_roots=roots,
            hashes=hashes,
        )
        if expected_sha256 and base.files_sha256 != expected_sha256:
            raise ScoringFailed(
                FailureReason.MODEL_LOAD_FAILED,
                f"base model {base.path} has files_sha256 {base.files_sha256}, "
                f"expected {expected_sha256}",
            )
        tokenizer = load_tokenizer(base.path)
        bare = load_base_model(
            base, task, labels=labels, pad_token_id=tokenizer.pad_token_id, device=device
        )
    model: torch.nn.Module = bare
    if adapter_dir is not None:
        with _failing_as(adapter_reason, f"the {subject.role.value}'s adapter"):
            model = load_adapter(bare, adapter_dir)
    model.eval()
    return LoadedSubject(
        model,
        tokenizer,
        tuple(labels),
        _max_length(bare, job.scoring.max_seq_length),
        model_dir=base.path,
    )


# -- batching ---------------------------------------------------------------------------------


def length_batches(
    lengths: Sequence[int], *, batch_size: int, max_batch_tokens: int
) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    A batch holds at most ``batch_size`` examples and at most ``max_batch_tokens`` padded
    positions (at least one example, however long). Longest first: if anything runs out of
    memory, it does on the first batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[current[0]] if current else lengths[index]
        if current and (
            len(current) >= batch_size or (len(current) + 1) * width > max_batch_tokens
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


# -- scoring ----------------------------------------------------------------------------------


def _encode(loaded: LoadedSubject, rows: Sequence[Row], task: TaskType) -> list[EncodedExample]:
    try:
        return encode_rows(
            loaded.tokenizer, rows, task, max_length=loaded.max_length, labels=loaded.labels
        )
    except DataUnavailable as error:
        raise ScoringFailed(FailureReason.DATA_UNAVAILABLE, str(error)) from error


def score_classification(
    loaded: LoadedSubject, rows: Sequence[Row], job: ScoringJob, device: torch.device
) -> ClassificationOutcomes:
    """Per-example loss and prediction of a sequence classifier."""
    examples = _encode(loaded, rows, TaskType.CLASSIFICATION)
    losses = np.zeros(len(examples))
    predicted = np.zeros(len(examples), dtype=np.int64)
    pad_id = int(loaded.tokenizer.pad_token_id)
    batches = length_batches(
        [e.length for e in examples],
        batch_size=job.batch_size,
        max_batch_tokens=job.max_batch_tokens,
    )
    with torch.inference_mode():
        for indices in batches:
            batch = pad_batch([examples[i] for i in indices], pad_id).to(device)
            logits = loaded.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).logits.float()
            losses[indices] = F.cross_entropy(logits, batch.labels, reduction="none").cpu().numpy()
            predicted[indices] = logits.argmax(dim=-1).cpu().numpy()
    labels = loaded.labels
    return ClassificationOutcomes(
        example_ids=tuple(e.row_id for e in examples),
        slices=tuple(e.slice for e in examples),
        true_labels=tuple(labels[int(e.label or 0)] for e in examples),
        predicted_labels=tuple(labels[int(p)] for p in predicted),
        losses=losses,
    )


def generation_subset(row_ids: Sequence[str], limit: int) -> set[str]:
    """The ids whose generation is scored: the first ``limit`` by sha256 of the id."""
    ranked = sorted(row_ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    return set(ranked[:limit])


def _normalized(text: str) -> str:
    return " ".join(text.split())


def stop_token_ids(loaded: LoadedSubject) -> tuple[int, ...]:
    """Where greedy generation stops: every end-of-turn id of the model's generation config,
    the tokenizer's EOS and its chat template's end-of-turn tokens (the same ids the
    tokenizer fingerprint records)."""
    return end_of_turn_token_ids(loaded.tokenizer, loaded.model_dir)


def generate_answers(
    loaded: LoadedSubject,
    rows: Sequence[Row],
    job: ScoringJob,
    device: torch.device,
) -> dict[str, tuple[str, str]]:
    """Greedy generation for the rows given: (generated text, reference) per row id."""
    tokenizer = loaded.tokenizer
    budget = max(2, loaded.max_length - job.scoring.max_new_tokens)
    try:
        prompts = [generation_prompt(tokenizer, row, max_length=budget) for row in rows]
    except DataUnavailable as error:
        raise ScoringFailed(FailureReason.DATA_UNAVAILABLE, str(error)) from error
    pad_id = int(tokenizer.pad_token_id)
    stop_ids = list(stop_token_ids(loaded))
    results: dict[str, tuple[str, str]] = {}
    batches = length_batches(
        [len(p.prompt_ids) for p in prompts],
        batch_size=job.batch_size,
        max_batch_tokens=job.max_batch_tokens,
    )
    with torch.inference_mode():
        for indices in batches:
            chosen = [prompts[i] for i in indices]
            width = max(len(p.prompt_ids) for p in chosen)
            # left padding: every prompt ends where generation starts
            input_ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chosen), width), dtype=torch.long)
            for row, prompt in enumerate(chosen):
                n = len(prompt.prompt_ids)
                input_ids[row, width - n :] = torch.tensor(prompt.prompt_ids, dtype=torch.long)
                attention[row, width - n :] = 1
            generated = loaded.model.generate(  # type: ignore[operator]
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=job.scoring.max_new_tokens,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=stop_ids,
            )
            for row, prompt in enumerate(chosen):
                text = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
                results[prompt.row_id] = (text, prompt.reference)
    return results


def score_causal_lm(
    loaded: LoadedSubject, rows: Sequence[Row], job: ScoringJob, device: torch.device
) -> CausalLMOutcomes:
    """Per-example completion-token loss and token accuracy, and bounded exact match."""
    examples = _encode(loaded, rows, TaskType.CAUSAL_LM)
    n = len(examples)
    loss_sums = np.zeros(n)
    token_counts = np.zeros(n, dtype=np.int64)
    correct_tokens = np.zeros(n, dtype=np.int64)
    pad_id = int(loaded.tokenizer.pad_token_id)
    batches = length_batches(
        [e.length for e in examples],
        batch_size=job.batch_size,
        max_batch_tokens=job.max_batch_tokens,
    )
    with torch.inference_mode():
        for indices in batches:
            batch = pad_batch([examples[i] for i in indices], pad_id).to(device)
            logits = loaded.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).logits[:, :-1]
            targets = batch.labels[:, 1:]
            scored = targets != IGNORE_INDEX
            token_losses = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                targets.clamp(min=0).reshape(-1),
                reduction="none",
            ).view(targets.shape)
            loss_sums[indices] = (token_losses * scored).sum(dim=1).double().cpu().numpy()
            token_counts[indices] = scored.sum(dim=1).cpu().numpy()
            hits = (logits.argmax(dim=-1) == targets) & scored
            correct_tokens[indices] = hits.sum(dim=1).cpu().numpy()
            del logits, token_losses
    kept = {e.row_id for e in examples}
    chosen = generation_subset(sorted(kept), job.scoring.max_generation_examples)
    generated_rows = [r for r in rows if r["id"] in chosen]
    answers = generate_answers(loaded, generated_rows, job, device)
    schemas = {r["id"]: r["json_schema"] for r in generated_rows if "json_schema" in r}

    def per_example(measure: Callable[[str, str, str], float]) -> FloatArray:
        return np.asarray(
            [
                measure(e.row_id, *answers[e.row_id]) if e.row_id in answers else math.nan
                for e in examples
            ]
        )

    exact = per_example(lambda _, text, ref: float(_normalized(text) == _normalized(ref)))
    f1 = per_example(lambda _, text, ref: token_f1(text, ref))
    rouge = per_example(lambda _, text, ref: rouge_l(text, ref))
    json_ok = per_example(
        lambda row_id, text, _: (
            float(json_valid(text, schemas[row_id])) if row_id in schemas else math.nan
        )
    )
    return CausalLMOutcomes(
        example_ids=tuple(e.row_id for e in examples),
        slices=tuple(e.slice for e in examples),
        loss_sums=loss_sums,
        token_counts=token_counts,
        correct_tokens=correct_tokens,
        exact_matches=exact,
        token_f1=f1,
        rouge_l=rouge,
        json_valid=json_ok,
    )


def _release(device: torch.device) -> None:
    """Give a finished subject's memory back before the next loads (matters on a GPU; on a
    CPU reference counting frees it and a full collection only costs time)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def scoring_conditions(device_name: str | None) -> ScoringConditions:
    """The conditions :func:`score` computes under on ``device_name`` (``None``: CUDA if any)."""
    device = resolve_device(device_name)
    return ScoringConditions(
        device_type=device.type,
        dtype=str(default_dtype(device)).removeprefix("torch."),
        torch_version=torch.__version__,
        transformers_version=_installed_version("transformers"),
        peft_version=_installed_version("peft"),
    )


def _data_checks(
    job: ScoringJob, rows: dict[str, list[Row]], hashes: FolderHashCache
) -> DataChecks | None:
    """The job's data checks on its primary set, when it asks for them."""
    checks = job.data_checks
    if checks is None:
        return None
    try:
        training = read_rows(checks.training)
    except ScoringFailed as error:
        return skipped(checks.training_split, f"the training rows are unavailable: {error}")
    return run_data_checks(job, checks, rows[job.sets[0].set_key], training, hashes)


def score(job: ScoringJob) -> ScoringResult:
    """Score every subject of ``job`` on every set; raises :class:`ScoringFailed`.

    A job that names its conditions is refused unless this process computes under exactly
    those (its outcomes would be stored under a key that does not describe them).
    """
    started = time.perf_counter()
    device = resolve_device(job.device)
    expected = job.scoring.conditions
    if expected is not None and (actual := scoring_conditions(job.device)) != expected:
        raise ScoringFailed(
            FailureReason.INTERNAL,
            f"the job expects to be scored under {expected.key}, this worker scores under "
            f"{actual.key}",
        )
    hashes = FolderHashCache()
    rows = {source.set_key: read_rows(source) for source in job.sets}
    outcomes: dict[tuple[str, str], ExampleOutcomes] = {}
    subject_seconds: dict[str, float] = {}
    load_seconds = 0.0
    scored = 0
    try:
        for subject in job.subjects:
            subject_started = time.perf_counter()
            # a bare classifier's head follows the labels of the set it is scored on
            label_sets: dict[tuple[str, ...], list[RowSource]] = {}
            for source in job.sets:
                labels: tuple[str, ...] = ()
                if job.task_type is TaskType.CLASSIFICATION and not subject.adapter_path:
                    labels = tuple(classification_labels(rows[source.set_key]))
                label_sets.setdefault(labels, []).append(source)
            for labels, sources in label_sets.items():
                load_started = time.perf_counter()
                loaded = load_subject(subject, job, device, hashes, labels=labels)
                load_seconds += time.perf_counter() - load_started
                for source in sources:
                    set_rows = rows[source.set_key]
                    if job.task_type is TaskType.CLASSIFICATION:
                        result: ExampleOutcomes = score_classification(
                            loaded, set_rows, job, device
                        )
                    else:
                        result = score_causal_lm(loaded, set_rows, job, device)
                    outcomes[(subject.subject_key, source.set_key)] = result
                    scored += len(result)
                del loaded
                _release(device)
            subject_seconds[subject.subject_key] = time.perf_counter() - subject_started
        parity = parity_for_job(job, rows, device, hashes)
        data_checks = _data_checks(job, rows, hashes)
    except torch.cuda.OutOfMemoryError as error:
        _release(device)
        raise ScoringFailed(FailureReason.OUT_OF_MEMORY, str(error)) from error
    except MemoryError as error:
        raise ScoringFailed(FailureReason.OUT_OF_MEMORY, "host memory exhausted") from error
    device_name = device.type
    if device.type == "cuda":
        device_name = f"cuda:{torch.cuda.get_device_name(device)}"
    return ScoringResult(
        outcomes=outcomes,
        device=device_name,
        seconds=time.perf_counter() - started,
        examples_scored=scored,
        load_seconds=load_seconds,
        subject_seconds=subject_seconds,
        parity=parity,
        data_checks=data_checks,
    )
