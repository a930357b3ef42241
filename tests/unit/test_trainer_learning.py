"""Real learning on the real packaged models of DATA.md (the two slow tests of the trainer).

* LoRA on all-MiniLM-L6-v2 with Rotten Tomatoes snippets lifts validation accuracy clearly
  above the untrained model (base + a fresh, seeded head) within a bounded number of steps;
* LoRA on the 4-layer cut of SmolLM2 with chatterbot-corpus question/answer pairs lowers the
  validation loss on completion tokens, and prompt tokens carry none.

The models are prepared once per machine into the models root (``tuneline models prepare``;
the first run converts SmolLM2's GGUF, later runs find it there). Everything is seeded; the
margins leave room for the float noise of different CPUs and thread counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from services.trainer.adapters.engine.loop import batch_loss, run_training
from services.trainer.adapters.engine.signals import StopSignals
from services.trainer.domain.config import (
    AdapterSpec,
    BaseModelRef,
    CheckpointPolicy,
    Hyperparameters,
    StoppingRules,
    resolve_adapter,
    resolve_checkpointing,
    resolve_hyperparameters,
    resolve_stopping,
)
from services.trainer.domain.worker_messages import (
    WorkerCheckpoint,
    WorkerMessage,
    WorkerPlan,
    WorkerProgress,
)
from shared.artifacts import LocalArtifactStore
from shared.modeling import (
    IGNORE_INDEX,
    EncodedExample,
    ResolvedModel,
    default_models_root,
    encode_rows,
    resolve_base_model,
)
from shared.modeling.batching import pad_batch
from shared.modeling.loading import load_base_model, load_checkpoint, load_tokenizer
from shared.modeling.packaged import ENCODER, SMOLLM2_4_LAYERS, prepare_packaged_models
from shared.task_types import TaskType
from tests.fixtures.trainer_data import (
    WrittenSplit,
    chatterbot_rows,
    rotten_tomatoes_rows,
    write_split,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared two-core machine a second thread mostly waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def packaged(name: str) -> ResolvedModel:
    root = default_models_root()
    prepare_packaged_models(root, names=(name,))  # a no-op once prepared
    return resolve_base_model(model_name=name, models_root=root)


def plan_for(  # noqa: PLR0917 - what differs between the two learning runs
    model: ResolvedModel,
    split: WrittenSplit,
    task: TaskType,
    hyperparameters: Hyperparameters,
    artifacts: Path,
    eval_every: int,
) -> WorkerPlan:
    hp = resolve_hyperparameters(hyperparameters, 512)
    stopping = resolve_stopping(StoppingRules(eval_every_n_steps=eval_every), eval_every)
    return WorkerPlan(
        job="trainingJobs/learning",
        task_type=task,
        model_dir=str(model.path),
        base_model=BaseModelRef(
            model_name=model.model_name,
            files_sha256=model.files_sha256,
            model_type=model.model_type,
            architecture=model.architecture,
        ),
        manifest_path=str(split.manifest_path),
        manifest_sha256=split.manifest_sha256,
        dataset_path=str(split.dataset_path),
        adapter=resolve_adapter(AdapterSpec(rank=8), task, model.model_type),
        hyperparameters=hp,
        stopping=stopping,
        checkpointing=resolve_checkpointing(CheckpointPolicy(every_n_steps=10_000), stopping),
        artifact_root=str(artifacts),
        artifact_prefix="jobs/learning",
        cpu_threads=1,
    )


@torch.no_grad()
def accuracy(model: torch.nn.Module, examples: list[EncodedExample], pad_token_id: int) -> float:
    correct = 0
    for start in range(0, len(examples), 64):
        batch = pad_batch(examples[start : start + 64], pad_token_id)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        correct += int((logits.argmax(-1) == batch.labels).sum())
    return correct / len(examples)


def test_lora_on_minilm_learns_rotten_tomatoes_sentiment(tmp_path: Path) -> None:
    model = packaged(ENCODER)
    rows = rotten_tomatoes_rows(2200, seed=0)
    split = write_split(tmp_path / "data", rows, validation_fraction=0.1, seed=0)
    plan = plan_for(
        model,
        split,
        TaskType.CLASSIFICATION,
        Hyperparameters(
            batch_size=16,
            learning_rate=3e-3,
            max_steps=60,
            max_seq_length=48,
            warmup_ratio=0.1,
            seed=0,
        ),
        tmp_path / "artifacts",
        eval_every=60,
    )
    messages: list[WorkerMessage] = []
    run_training(plan, messages.append, StopSignals())
    final = next(m for m in messages if isinstance(m, WorkerCheckpoint) and m.is_final)

    validation_ids = set(split.validation_ids)
    validation = [r for r in rows if r["id"] in validation_ids]
    trained = load_checkpoint(
        LocalArtifactStore(tmp_path / "artifacts").local_path(final.artifact_uri),
        models_root=default_models_root(),
        device="cpu",
    )
    assert trained.metadata is not None
    labels = trained.metadata.labels
    assert labels == ["fresh", "rotten"]
    tokenizer = trained.tokenizer
    examples = encode_rows(tokenizer, validation, "classification", max_length=48, labels=labels)
    untrained = load_base_model(
        model, "classification", labels=labels, pad_token_id=tokenizer.pad_token_id, head_seed=0
    ).eval()
    before = accuracy(untrained, examples, tokenizer.pad_token_id)
    after = accuracy(trained.model, examples, tokenizer.pad_token_id)
    # seen: 0.53 before, 0.74 after 60 steps
    assert after >= 0.68, (before, after)
    assert after - before >= 0.12, (before, after)


def test_lora_on_smollm2_lowers_completion_loss_on_chatterbot_pairs(tmp_path: Path) -> None:
    model = packaged(SMOLLM2_4_LAYERS)
    rows = chatterbot_rows(500, seed=0)
    split = write_split(tmp_path / "data", rows, validation_fraction=0.16, seed=0)
    tokenizer = load_tokenizer(model.path)
    validation_ids = set(split.validation_ids)
    validation = encode_rows(
        tokenizer, [r for r in rows if r["id"] in validation_ids], "causal_lm", max_length=96
    )
    # prompt tokens carry no loss: exactly the completion (and EOS) is learned
    sample = next(r for r in rows if r["id"] in validation_ids)
    (encoded,) = encode_rows(tokenizer, [sample], "causal_lm", max_length=96)
    prompt_length = len(tokenizer(sample["prompt"])["input_ids"])
    assert encoded.labels is not None
    assert set(encoded.labels[:prompt_length]) == {IGNORE_INDEX}
    learned = [t for t in encoded.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(learned) == sample["completion"] + tokenizer.eos_token

    base = load_base_model(model, "causal_lm", device="cpu").eval()
    with torch.no_grad():
        totals = [
            batch_loss(
                base,
                pad_batch(validation[i : i + 16], tokenizer.pad_token_id),
                TaskType.CAUSAL_LM,
                varlen=False,
            )
            for i in range(0, len(validation), 16)
        ]
    before = sum(float(t) for t, _ in totals) / sum(float(w) for _, w in totals)
    plan = plan_for(
        model,
        split,
        TaskType.CAUSAL_LM,
        Hyperparameters(batch_size=8, learning_rate=1e-3, max_steps=30, max_seq_length=96, seed=0),
        tmp_path / "artifacts",
        eval_every=15,
    )
    messages: list[WorkerMessage] = []
    run_training(plan, messages.append, StopSignals())
    curve = [
        m.validation_loss for m in messages if isinstance(m, WorkerProgress) and m.validation_loss
    ]
    assert len(curve) == 2
    # the engine's validation loss is the same measure (nats per completion token)
    assert curve[-1] < curve[0] < before
    assert curve[-1] <= 0.8 * before, (before, curve)  # seen: 18.9 -> 13.2
