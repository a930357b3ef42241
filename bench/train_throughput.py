"""Training throughput: Hugging Face ``Trainer`` + peft, plain and tuned, vs Tuneline's engine.

All three train the same LoRA adapter (no dropout, the engine's default) on the same model, the
same examples and the same hyperparameters, in one run, one after the other:

* (a) HF default — ``transformers.Trainer`` with a peft model and default padding (each random
  batch padded to its longest example, labels padded with -100), the loss computed by the model
  over every position;
* (b) tuned HF — the same ``Trainer`` with HF's own padding-free path:
  ``DataCollatorWithFlattening`` (one row per batch, ``position_ids`` restarting per example)
  with FlashAttention-2 where it is installed on CUDA, else sdpa (transformers keeps attention
  inside each example from the restarting positions), and Liger kernels (``use_liger_kernel``)
  where installed on CUDA;
* (c) engine — :class:`services.trainer.adapters.engine.loop.TrainingSession`, the code the
  trainer's workers run: padding-free packed micro-batches by token budget with varlen attention
  and compiled decoder layers on CUDA (length-grouped padded batches, eager, on CPU), logits only
  where a completion token is predicted.

It prints which device ran, non-padding tokens per second of each (after a few warm-up steps),
the ratios, peak memory, and model FLOPs utilisation: 4 FLOPs per parameter and token for LoRA
(forward 2, backward through the frozen weights 2) for the decoder layers' matmuls on every
token, for the output head only on the positions the run computes logits for (every token for
HF, completion tokens for the engine), plus attention (12 * layers * hidden * mean attended
length: forward and its two backward matmuls), against the device's dense bf16 peak (H100 SXM
and H200: 989 TFLOP/s).

    python bench/train_throughput.py --device cpu    # small model; goal: engine >= 0.95x HF
    python bench/train_throughput.py --device cuda   # ~1.2B Llama-shaped model; goals: >= 1.5x
                                                     # HF default, >= 1.2x tuned HF, MFU >= 35%

The model is built from a config with random weights (speed does not depend on them) and
saved with ``save_pretrained``, so the engine loads it the way it loads any base model; no
network is needed.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
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
    DataCollatorWithFlattening,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from services.trainer.adapters.engine.loop import TrainingSession
from services.trainer.adapters.engine.preparation import TrainingData
from services.trainer.adapters.engine.signals import StopSignals
from services.trainer.domain.config import (
    AdapterSpec,
    BaseModelRef,
    CheckpointPolicy,
    Hyperparameters,
    LearningRateSchedule,
    StoppingRules,
    resolve_adapter,
    resolve_for_device,
    resolve_hyperparameters,
)
from services.trainer.domain.worker_messages import WorkerMessage, WorkerPlan, WorkerProgress
from services.trainer.settings import TrainerSettings
from shared.artifacts import LocalArtifactStore
from shared.modeling import IGNORE_INDEX, EncodedExample, folder_sha256
from shared.task_types import TaskType

#: Dense bf16 peaks, TFLOP/s, by a substring of the CUDA device name (the first that matches:
#: the H100 PCIe and NVL parts before the SXM one, whose name is "H100 80GB HBM3").
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
}
#: The adapter every run trains.
LORA_RANK, LORA_ALPHA, LORA_TARGETS = 16, 32, ["q_proj", "k_proj", "v_proj", "o_proj"]


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


def layer_parameters(config: LlamaConfig) -> int:
    """Parameters that do matmuls on every token: the decoder layers'."""
    head_dim = config.hidden_size // config.num_attention_heads
    attention = (
        config.hidden_size
        * head_dim
        * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    )
    mlp = 3 * config.hidden_size * config.intermediate_size
    return config.num_hidden_layers * (attention + mlp)


def head_parameters(config: LlamaConfig) -> int:
    return config.vocab_size * config.hidden_size


def flops_per_token(
    config: LlamaConfig, examples: list[EncodedExample], head_share: float
) -> float:
    """Model FLOPs per real token, the output head counted for ``head_share`` of the tokens
    (the positions whose logits the run computes)."""
    mean_attended = sum(e.length * (e.length + 1) / 2 for e in examples) / sum(
        e.length for e in examples
    )
    attention = 12 * config.num_hidden_layers * config.hidden_size * mean_attended
    return 4 * layer_parameters(config) + 4 * head_parameters(config) * head_share + attention


def completion_share(examples: list[EncodedExample]) -> float:
    """The share of tokens whose next token is a completion token (the engine's logits)."""
    return sum(e.loss_tokens for e in examples) / sum(e.length for e in examples)


@dataclass
class Result:
    name: str
    tokens_per_second: float
    seconds: float
    tokens: int
    peak_memory_gb: float
    #: Share of tokens the output head runs on.
    head_share: float = 1.0


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


class _FlatteningCollator:
    """``DataCollatorWithFlattening`` (one padding-free row, restarting ``position_ids``),
    counting each batch's tokens."""

    def __init__(self) -> None:
        self.flatten = DataCollatorWithFlattening(
            return_position_ids=True, separator_id=IGNORE_INDEX
        )
        self.real_tokens: list[int] = []

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        batch = self.flatten(features, return_tensors="pt")
        self.real_tokens.append(int(batch["input_ids"].numel()))
        return batch


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


def tuned_hf_setup(device: torch.device) -> tuple[str, bool] | str:
    """(attention implementation, Liger on) of the tuned HF run here, or why it cannot run."""
    try:
        from transformers.masking_utils import (  # noqa: PLC0415, F401 - a feature probe
            find_packed_sequence_indices,
        )
    except ImportError:
        return "this transformers cannot keep sdpa attention inside flattened examples"
    cuda = device.type == "cuda"
    flash = cuda and importlib.util.find_spec("flash_attn") is not None
    liger = cuda and importlib.util.find_spec("liger_kernel") is not None
    return ("flash_attention_2" if flash else "sdpa"), liger


def run_hf(  # noqa: PLR0917 - the benchmark's inputs, the same for every run
    folder: Path,
    examples: list[EncodedExample],
    shape: Shape,
    hp: Hyperparameters,
    device: torch.device,
    out: Path,
    tuned: tuple[str, bool] | None = None,
) -> Result:
    """HF default (padding, sdpa), or with ``tuned`` = (attention, Liger) the tuned HF run."""
    _reset_memory(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attention, liger = tuned or ("sdpa", False)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attention)
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=LORA_RANK,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
        ),
    )
    collator = _FlatteningCollator() if tuned else _PaddingCollator(pad_token_id=0)
    clock = _StepClock(device)
    args = TrainingArguments(
        output_dir=str(out / ("tuned" if tuned else "baseline")),
        use_liger_kernel=liger,
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
    if tuned:
        name = f"tuned HF (flattening, {attention}{', Liger' if liger else ''})"
    else:
        name = "HF default (Trainer, padding)"
    result = Result(name, tokens / seconds, seconds, tokens, _peak_memory_gb(device))
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
            AdapterSpec(rank=LORA_RANK, alpha=float(LORA_ALPHA)), TaskType.CAUSAL_LM, "llama"
        ),
        hyperparameters=resolved,
        stopping=StoppingRules(eval_every_n_steps=10**9),
        checkpointing=CheckpointPolicy(every_n_steps=10**9),
        artifact_root=str(out / "engine-artifacts"),
        artifact_prefix="jobs/bench",
        device=str(device),
        # the trainer's defaults (compiling: on CUDA only)
        micro_batch_tokens=TrainerSettings.model_fields["micro_batch_tokens"].default,
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
        micro_batch_tokens=plan.micro_batch_tokens,
    )
    attention = (
        "varlen" if session.varlen else ("sdpa, packed" if session.packing else "sdpa, padded")
    )
    if any(f.feature == "compile" for f in session.fallbacks):
        attention += ", compile failed"
    elif plan.compile_layers or device.type == "cuda":
        attention += ", compiled"
    session.run("")
    by_step = {m.step: (t, m.tokens_seen) for t, m in progress}
    start_time, start_tokens = by_step[shape.warmup_steps]
    end_time, end_tokens = by_step[shape.steps]
    seconds = end_time - start_time
    tokens = end_tokens - start_tokens
    name = f"engine ({attention})"
    result = Result(
        name, tokens / seconds, seconds, tokens, _peak_memory_gb(device), completion_share(examples)
    )
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
    tuned = tuned_hf_setup(device)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory(prefix="tuneline-bench-") as temp:
        out = Path(temp)
        folder = out / "model"
        started = time.perf_counter()
        config = build_model(shape, folder, device)
        print(
            f"model: Llama-shaped, "
            f"{(layer_parameters(config) + head_parameters(config)) / 1e9:.3f}B matmul "
            f"parameters, built and saved in {time.perf_counter() - started:.1f}s; "
            f"{len(examples)} examples of {shape.min_length}-{shape.max_length} tokens, "
            f"batch {shape.batch_size}, {shape.steps} steps ({shape.warmup_steps} warm-up); "
            f"device: {device_name}"
        )
        if isinstance(tuned, str):
            print(f"tuned HF row skipped: {tuned}")
        runs: dict[str, list[Result]] = {"default": [], "tuned": [], "engine": []}
        for _ in range(max(1, args.repeat)):
            runs["default"].append(run_hf(folder, examples, shape, hp, device, out))
            if not isinstance(tuned, str):
                runs["tuned"].append(run_hf(folder, examples, shape, hp, device, out, tuned))
            runs["engine"].append(run_engine(folder, examples, shape, hp, device, out))
        best = {
            kind: max(results, key=lambda r: r.tokens_per_second)
            for kind, results in runs.items()
            if results
        }
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device_name), None)
    print_results(best, config, examples, device, peak)


def print_results(
    best: dict[str, Result],
    config: LlamaConfig,
    examples: list[EncodedExample],
    device: torch.device,
    peak: float | None,
) -> None:
    """Each run's row, the ratios against their goals, and the same as one JSON line."""
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    memory = "peak GPU memory" if device.type == "cuda" else "peak process RSS"
    rows = []
    for result in best.values():
        per_token = flops_per_token(config, examples, result.head_share)
        mfu = f"{result.tokens_per_second * per_token / (peak * 1e12):.1%}" if peak else "n/a"
        rows.append(
            {
                "run": result.name,
                "tokens_per_second": round(result.tokens_per_second, 1),
                "measured_tokens": result.tokens,
                "seconds": round(result.seconds, 2),
                memory.replace(" ", "_") + "_gb": round(result.peak_memory_gb, 2),
                "gflop_per_token": round(per_token / 1e9, 4),
                "mfu": mfu,
            }
        )
        print(
            f"{result.name:44s} {result.tokens_per_second:>12,.0f} non-padding tokens/s   "
            f"{memory} {result.peak_memory_gb:6.2f} GB   MFU {mfu}"
        )
    engine = best["engine"].tokens_per_second
    ratios = {"engine/hf_default": engine / best["default"].tokens_per_second}
    goals = {"engine/hf_default": 1.5 if device.type == "cuda" else 0.95}
    if "tuned" in best:
        ratios["engine/tuned_hf"] = engine / best["tuned"].tokens_per_second
        ratios["tuned_hf/hf_default"] = (
            best["tuned"].tokens_per_second / best["default"].tokens_per_second
        )
        if device.type == "cuda":
            goals["engine/tuned_hf"] = 1.2
    for key, ratio in ratios.items():
        goal = goals.get(key)
        verdict = f" (goal >= {goal}x: {'met' if ratio >= goal else 'NOT met'})" if goal else ""
        print(f"ratio {key}: {ratio:.2f}x{verdict}")
    print(
        f"device: {device_name}; MFU counts the head only on the positions each run computes "
        "logits for (every token for HF, completion tokens for the engine)"
        + ("" if peak else "; no bf16 peak known for this device (pass --peak-tflops)")
    )
    print(
        json.dumps(
            {
                "device": device_name,
                "ratios": {k: round(v, 3) for k, v in ratios.items()},
                "runs": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
