"""Training throughput: a plain Hugging Face ``Trainer`` + peft baseline vs Tuneline's engine.

Both train the same LoRA adapter on the same model, the same examples and the same
hyperparameters, in one run, one after the other:

* (a) baseline — ``transformers.Trainer`` with a peft model and default padding (each random
  batch padded to its longest example, labels padded with -100), the loss computed by the model
  over every position;
* (b) engine — :class:`services.trainer.adapters.engine.loop.TrainingSession`, the code the
  trainer's workers run: padding-free packed batches with varlen attention on CUDA
  (length-grouped padded batches on CPU), logits only where a completion token is predicted.

It prints non-padding tokens per second of each (after a few warm-up steps), their ratio, peak
memory, and model FLOPs utilisation: 4N FLOPs per token for LoRA (forward 2N, backward through
the frozen weights 2N; N = the matmul parameters, the output head included) plus attention
(12 * layers * hidden * mean attended length: forward and its two backward matmuls), against
the device's bf16 peak (H200: 989 TFLOP/s dense).

    python bench/train_throughput.py --device cpu    # small model; goal: engine >= 0.95x
    python bench/train_throughput.py --device cuda   # ~1.2B Llama-shaped model; goal >= 1.5x

The model is built from a config with random weights (speed does not depend on them) and
saved with ``save_pretrained``, so the engine loads it the way it loads any base model; no
network is needed.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from services.trainer.adapters.engine.loop import TrainingData, TrainingSession
from services.trainer.adapters.engine.plan import (
    StopSignals,
    WorkerMessage,
    WorkerPlan,
    WorkerProgress,
)
from services.trainer.domain import (
    AdapterSpec,
    BaseModelRef,
    CheckpointPolicy,
    Hyperparameters,
    LearningRateSchedule,
    StoppingRules,
    TaskType,
    resolve_adapter,
    resolve_for_device,
    resolve_hyperparameters,
)
from shared.artifacts import LocalArtifactStore
from shared.modeling import IGNORE_INDEX, EncodedExample, folder_sha256

#: Dense bf16 peaks, TFLOP/s, by a substring of the CUDA device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


@dataclass(frozen=True)
class Shape:
    """A benchmark size: the model and the data."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    min_length: int
    max_length: int
    batch_size: int
    steps: int
    warmup_steps: int
    examples: int


SHAPES = {
    # ~6M parameters: quick on two CPU cores
    "cpu": Shape(256, 4, 4, 2, 688, 4096, 16, 192, 8, 24, 4, 400),
    # Llama-3.2-1B-shaped (1.24B parameters, tied embeddings)
    "cuda": Shape(2048, 16, 32, 8, 8192, 128256, 64, 2048, 8, 40, 6, 1200),
}


def make_examples(shape: Shape, seed: int) -> list[EncodedExample]:
    """Variable-length prompt/completion examples of random tokens; loss on completions."""
    draw = random.Random(seed)
    examples = []
    for index in range(shape.examples):
        length = draw.randint(shape.min_length, shape.max_length)
        prompt = max(1, int(length * draw.uniform(0.3, 0.7)))
        ids = tuple(draw.randrange(3, shape.vocab) for _ in range(length))
        labels = (IGNORE_INDEX,) * prompt + ids[prompt:]
        examples.append(EncodedExample(f"x{index}", ids, labels))
    return examples


def build_model(shape: Shape, folder: Path, device: torch.device) -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max(4096, shape.max_length),
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return config


def matmul_parameters(config: LlamaConfig) -> int:
    """Parameters that do matmuls per token: every layer's, plus the output head."""
    head_dim = config.hidden_size // config.num_attention_heads
    attention = (
        config.hidden_size
        * head_dim
        * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    )
    mlp = 3 * config.hidden_size * config.intermediate_size
    return config.num_hidden_layers * (attention + mlp) + config.vocab_size * config.hidden_size


def flops_per_token(config: LlamaConfig, examples: list[EncodedExample]) -> float:
    mean_attended = sum(e.length * (e.length + 1) / 2 for e in examples) / sum(
        e.length for e in examples
    )
    attention = 12 * config.num_hidden_layers * config.hidden_size * mean_attended
    return 4 * matmul_parameters(config) + attention


@dataclass
class Result:
    name: str
    tokens_per_second: float
    seconds: float
    tokens: int
    peak_memory_gb: float


def _reset_memory(device: torch.device) -> None:
    gc.collect()  # the previous run's model, optimizer and trainer go first
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    # the process's peak resident set (it only grows: the engine runs second)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


class _StepClock(TrainerCallback):
    """Wall time at the end of every optimizer step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


class _PaddingCollator:
    """Default padding, as ``DataCollatorForSeq2Seq`` does it: to the batch's longest, labels
    with -100; counts each batch's real tokens."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = pad_token_id
        self.real_tokens: list[int] = []

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"])
            mask[row, :n] = 1
            labels[row, :n] = torch.tensor(feature["labels"])
        self.real_tokens.append(int(mask.sum()))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def run_baseline(  # noqa: PLR0917 - the benchmark's inputs, the same for both runs
    folder: Path,
    examples: list[EncodedExample],
    shape: Shape,
    hp: Hyperparameters,
    device: torch.device,
    out: Path,
) -> Result:
    _reset_memory(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        ),
    )
    collator = _PaddingCollator(pad_token_id=0)
    clock = _StepClock(device)
    args = TrainingArguments(
        output_dir=str(out / "baseline"),
        per_device_train_batch_size=shape.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=hp.learning_rate,
        lr_scheduler_type="linear",
        max_steps=shape.steps,
        bf16=device.type == "cuda",
        use_cpu=device.type == "cpu",
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=int(hp.seed or 0),
        max_grad_norm=1.0,
        weight_decay=0.0,
        disable_tqdm=True,
    )
    dataset = [{"input_ids": list(e.input_ids), "labels": list(e.labels or ())} for e in examples]
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[clock]
    )
    trainer.train()
    warm = shape.warmup_steps
    seconds = clock.times[-1] - clock.times[warm - 1]
    tokens = sum(collator.real_tokens[warm : len(clock.times)])
    result = Result(
        "baseline (HF Trainer, padding)", tokens / seconds, seconds, tokens, _peak_memory_gb(device)
    )
    del trainer, model
    return result


def run_engine(  # noqa: PLR0917 - the benchmark's inputs, the same for both runs
    folder: Path,
    examples: list[EncodedExample],
    shape: Shape,
    hp: Hyperparameters,
    device: torch.device,
    out: Path,
) -> Result:
    _reset_memory(device)
    resolved = resolve_for_device(hp, TaskType.CAUSAL_LM, cuda=device.type == "cuda")
    plan = WorkerPlan(
        job="trainingJobs/bench",
        task_type=TaskType.CAUSAL_LM,
        model_dir=str(folder),
        base_model=BaseModelRef(
            model_name=folder.name, files_sha256=folder_sha256(folder), model_type="llama"
        ),
        manifest_path="",
        manifest_sha256="",
        dataset_path="",
        adapter=resolve_adapter(
            AdapterSpec(rank=16, alpha=32.0, dropout=0.05), TaskType.CAUSAL_LM, "llama"
        ),
        hyperparameters=resolved,
        stopping=StoppingRules(eval_every_n_steps=10**9),
        checkpointing=CheckpointPolicy(every_n_steps=10**9),
        artifact_root=str(out / "engine-artifacts"),
        artifact_prefix="jobs/bench",
        device=str(device),
    )
    data = TrainingData(train=examples, validation=[], labels=[], pad_token_id=0)
    progress: list[tuple[float, WorkerProgress]] = []

    def report(message: WorkerMessage) -> None:
        if isinstance(message, WorkerProgress):
            if device.type == "cuda":
                torch.cuda.synchronize()
            progress.append((time.perf_counter(), message))

    session = TrainingSession(
        plan,
        resolved,
        data,
        device,
        micro_batch_size=shape.batch_size,
        report=report,
        signals=StopSignals(),
        store=LocalArtifactStore(out / "engine-artifacts"),
    )
    attention = (
        "varlen" if session.varlen else ("sdpa, packed" if session.packing else "sdpa, padded")
    )
    session.run("")
    by_step = {m.step: (t, m.tokens_seen) for t, m in progress}
    start_time, start_tokens = by_step[shape.warmup_steps]
    end_time, end_tokens = by_step[shape.steps]
    seconds = end_time - start_time
    tokens = end_tokens - start_tokens
    name = f"engine ({attention})"
    result = Result(name, tokens / seconds, seconds, tokens, _peak_memory_gb(device))
    del session
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, help="Optimizer steps per run.")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's).")
    parser.add_argument("--peak-tflops", type=float, help="The device's bf16 peak, for MFU.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="Alternate the two runs this many times and keep each one's best (a shared, "
        "noisy machine).",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = SHAPES[args.device]
    if args.steps:
        shape = Shape(**{**shape.__dict__, "steps": args.steps})
    torch.manual_seed(args.seed)
    examples = make_examples(shape, args.seed)
    hp = resolve_hyperparameters(
        Hyperparameters(
            batch_size=shape.batch_size,
            learning_rate=1e-4,
            learning_rate_schedule=LearningRateSchedule.LINEAR,
            max_steps=shape.steps,
            max_seq_length=shape.max_length,
            seed=args.seed,
        ),
        shape.max_length,
    )
    with tempfile.TemporaryDirectory(prefix="tuneline-bench-") as temp:
        out = Path(temp)
        folder = out / "model"
        started = time.perf_counter()
        config = build_model(shape, folder, device)
        print(
            f"model: Llama-shaped, {matmul_parameters(config) / 1e9:.3f}B matmul parameters, "
            f"built and saved in {time.perf_counter() - started:.1f}s; "
            f"{len(examples)} examples of {shape.min_length}-{shape.max_length} tokens, "
            f"batch {shape.batch_size}, {shape.steps} steps ({shape.warmup_steps} warm-up), "
            f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}"
        )
        baselines, engines = [], []
        for _ in range(max(1, args.repeat)):
            baselines.append(run_baseline(folder, examples, shape, hp, device, out))
            engines.append(run_engine(folder, examples, shape, hp, device, out))
        baseline = max(baselines, key=lambda r: r.tokens_per_second)
        engine = max(engines, key=lambda r: r.tokens_per_second)
    per_token = flops_per_token(config, examples)
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    memory = "peak GPU memory" if device.type == "cuda" else "peak process RSS"
    rows = []
    for result in (baseline, engine):
        mfu = f"{result.tokens_per_second * per_token / (peak * 1e12):.1%}" if peak else "n/a"
        rows.append(
            {
                "run": result.name,
                "tokens_per_second": round(result.tokens_per_second, 1),
                "measured_tokens": result.tokens,
                "seconds": round(result.seconds, 2),
                memory.replace(" ", "_") + "_gb": round(result.peak_memory_gb, 2),
                "mfu": mfu,
            }
        )
        print(
            f"{result.name:40s} {result.tokens_per_second:>12,.0f} non-padding tokens/s   "
            f"{memory} {result.peak_memory_gb:6.2f} GB   MFU {mfu}"
        )
    ratio = engine.tokens_per_second / baseline.tokens_per_second
    goal = 1.5 if device.type == "cuda" else 0.95
    verdict = "met" if ratio >= goal else "NOT met"
    print(
        f"ratio engine/baseline: {ratio:.2f}x (goal >= {goal}x: {verdict}); "
        f"MFU counts {per_token / 1e9:.2f} GFLOP per token (4N + attention)"
        + ("" if peak else "; no bf16 peak known for this device (pass --peak-tflops)")
    )
    print(json.dumps({"ratio": round(ratio, 3), "runs": rows}))


if __name__ == "__main__":
    main()
