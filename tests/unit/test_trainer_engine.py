"""The training engine in-process on tiny real models (built from configs, saved with
``save_pretrained``): adapters of every method load with PEFT, packed batches give the same
loss as padded ones, resume is exact, cancel and early stopping stop, OOM retries, and
broken inputs fail with the right reason."""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import itertools
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from services.trainer.adapters.engine import attention, compilation, loop, preparation
from services.trainer.adapters.engine import state as state_module
from services.trainer.adapters.engine.fused_loss import fused_head_loss, liger_layer_kernels
from services.trainer.adapters.engine.loop import (
    TrainingHalted,
    batch_loss,
    run_training,
)
from services.trainer.adapters.engine.signals import StopSignals, TrainingFailure
from services.trainer.adapters.engine.state import (
    LoopPosition,
    load_training_state,
    save_training_state,
)
from services.trainer.domain.config import (
    AdapterMethod,
    AdapterSpec,
    BaseModelRef,
    CheckpointPolicy,
    StoppingRules,
    TargetPreset,
    resolve_for_device,
)
from services.trainer.domain.jobs import FailureReason, RowSkipReason, StopReason
from services.trainer.domain.worker_messages import (
    WorkerCheckpoint,
    WorkerDiskFull,
    WorkerFinished,
    WorkerMessage,
    WorkerOomRetry,
    WorkerPlan,
    WorkerProgress,
    WorkerStarted,
)
from shared.artifacts import LocalArtifactStore, artifact_store_from_uri
from shared.modeling import (
    IGNORE_INDEX,
    encode_rows,
    folder_sha256,
    read_adapter_metadata,
    resolve_base_model,
)
from shared.modeling.batching import pack_batch, pad_batch
from shared.modeling.loading import load_checkpoint, load_tokenizer
from shared.modeling.tokenizer_fingerprint import tokenizer_fingerprint_from_extra
from shared.task_types import TaskType
from tests.fixtures.trainer_data import (
    build_tiny_llama,
    sentiment_rows,
    write_split,
)
from tests.fixtures.trainer_plans import engine_workspace, make_plan


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("engine")
    chat_rows: list[dict[str, Any]] = [
        {"prompt": f"question {i} is", "completion": f" answer {i % 5}"} for i in range(40)
    ]
    chat_rows += [
        {
            "messages": [
                {"role": "user", "content": f"hi {i}"},
                {"role": "assistant", "content": "hello"},
            ]
        }
        for i in range(8)
    ]
    return engine_workspace(root, chat_rows)


def train(plan: WorkerPlan, signals: StopSignals | None = None) -> list[WorkerMessage]:
    messages: list[WorkerMessage] = []
    run_training(plan, messages.append, signals or StopSignals())
    return messages


def of(kind: type, messages: list[WorkerMessage]) -> list[Any]:
    return [m for m in messages if isinstance(m, kind)]


def local(workspace: dict[str, Any], uri: str) -> Path:
    return LocalArtifactStore(workspace["root"] / "artifacts").local_path(uri)


@pytest.mark.parametrize("method", list(AdapterMethod))
def test_every_adapter_method_writes_checkpoints_peft_loads(
    workspace: dict[str, Any], method: AdapterMethod
) -> None:
    plan = make_plan(workspace, adapter=AdapterSpec(rank=4, method=method), prefix=f"jobs/{method}")
    messages = train(plan)
    checkpoints = of(WorkerCheckpoint, messages)
    assert [c.step for c in checkpoints] == [4, 8]
    assert checkpoints[-1].is_final
    assert [c.stop_reason for c in checkpoints] == [None, StopReason.MAX_STEPS]
    (finished,) = of(WorkerFinished, messages)
    assert finished.stop_reason is StopReason.MAX_STEPS
    folder = local(workspace, checkpoints[-1].artifact_uri)
    assert folder_sha256(folder) == checkpoints[-1].sha256
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["use_dora"] is (method is AdapterMethod.DORA)
    assert config["use_rslora"] is (method is AdapterMethod.RSLORA)
    assert sorted(config["target_modules"]) == ["key", "query", "value"]
    metadata = read_adapter_metadata(folder)
    assert metadata.labels == ["neg", "pos"]
    assert metadata.step == 8
    base = AutoModelForSequenceClassification.from_pretrained(
        workspace["models"] / "bert", num_labels=2
    )
    loaded = PeftModel.from_pretrained(base, folder)
    names = {n for n, _ in loaded.named_parameters()}
    assert any("lora_A" in n for n in names)
    assert any("classifier" in n and "modules_to_save" in n for n in names)
    if method is AdapterMethod.DORA:
        assert any("lora_magnitude_vector" in n for n in names)


def test_a_checkpoint_loads_for_evaluation_with_the_trained_head(workspace: dict[str, Any]) -> None:
    messages = train(make_plan(workspace, prefix="jobs/eval", max_steps=4))
    folder = local(workspace, of(WorkerCheckpoint, messages)[-1].artifact_uri)
    loaded = load_checkpoint(folder, models_root=workspace["models"], device="cpu")
    assert loaded.metadata is not None
    assert loaded.metadata.task is TaskType.CLASSIFICATION
    tokenizer = loaded.tokenizer
    examples = encode_rows(
        tokenizer, sentiment_rows(6), "classification", max_length=64, labels=loaded.metadata.labels
    )
    batch = pad_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        again = (
            load_checkpoint(folder, models_root=workspace["models"], device="cpu")
            .model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            .logits
        )
    assert logits.shape == (6, 2)
    assert torch.allclose(logits, again)  # the head is the trained one, not a fresh random one


def test_packed_batches_give_the_padded_loss_and_prompts_carry_none(
    workspace: dict[str, Any],
) -> None:
    folder = workspace["models"] / "llama"
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    rows = [
        {"id": "a", "prompt": "short one", "completion": " yes"},
        {
            "id": "b",
            "prompt": "a much longer prompt with many words in it",
            "completion": " no way",
        },
        {"id": "c", "prompt": "mid size prompt", "completion": " maybe later then"},
    ]
    examples = encode_rows(tokenizer, rows, "causal_lm", max_length=64)
    padded = pad_batch(examples, tokenizer.pad_token_id)
    packed = pack_batch(examples)
    with torch.no_grad():
        padded_total, padded_weight = batch_loss(model, padded, TaskType.CAUSAL_LM, varlen=False)
        packed_total, packed_weight = batch_loss(model, packed, TaskType.CAUSAL_LM, varlen=False)
        # reference: every example alone, full logits, cross-entropy on completion tokens
        reference, count = 0.0, 0
        for example in examples:
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0, :-1]
            targets = torch.tensor(example.labels[1:])
            mask = targets != IGNORE_INDEX
            reference += torch.nn.functional.cross_entropy(
                logits[mask], targets[mask], reduction="sum"
            ).item()
            count += int(mask.sum())
    assert count == sum(e.loss_tokens for e in examples)
    assert int(padded_weight) == count
    assert int(packed_weight) == count
    assert padded_total.item() == pytest.approx(reference, rel=1e-5)
    # a leak across examples would move it by ~1e-3 on this model: none
    assert packed_total.item() == pytest.approx(reference, rel=1e-5)


def _head_loss_pair(workspace: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """A LoRA-wrapped tiny Llama on ``device`` and a packed batch of three examples."""
    folder = workspace["models"] / "llama"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").to(device),
        LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"]),
    ).eval()
    rows = [
        {"id": "a", "prompt": "one two", "completion": " three"},
        {"id": "b", "prompt": "four five six seven", "completion": " eight nine"},
        {"id": "c", "prompt": "ten", "completion": " eleven twelve thirteen"},
    ]
    examples = encode_rows(load_tokenizer(folder), rows, "causal_lm", max_length=64)
    return model, pack_batch(examples).to(device)


def test_a_head_loss_over_the_decoders_hidden_states_gives_the_logits_loss(
    workspace: dict[str, Any],
) -> None:
    """The fused path's plumbing (decoder hidden states of the kept positions, then one
    head-and-loss call) with the head and loss written out: the logits path's loss."""
    model, batch = _head_loss_pair(workspace, torch.device("cpu"))
    head = model.get_output_embeddings()

    def written_out(hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = (hidden @ head.weight.T).float()
        return torch.nn.functional.cross_entropy(logits, targets, reduction="none")

    with torch.no_grad():
        expected, weight = batch_loss(model, batch, TaskType.CAUSAL_LM, varlen=False)
        fused, fused_weight = batch_loss(
            model, batch, TaskType.CAUSAL_LM, varlen=False, head_loss=written_out
        )
    assert fused_weight.item() == weight.item()
    assert fused.item() == pytest.approx(expected.item(), rel=1e-5)
    # Liger's kernels are CUDA only: on the CPU the engine keeps the logits path
    assert fused_head_loss(model, torch.device("cpu")) is None
    # and the layers keep their own RMSNorm, RoPE and SwiGLU (nothing swapped, no fallback)
    before = {name: type(module) for name, module in model.named_modules()}
    assert liger_layer_kernels(model, torch.device("cpu")) is None
    assert {name: type(module) for name, module in model.named_modules()} == before


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
    reason="needs a CUDA device and liger-kernel (the `liger` extra)",
)
def test_on_cuda_liger_fused_linear_cross_entropy_gives_the_logits_loss_and_gradients(
    workspace: dict[str, Any],
) -> None:
    model, batch = _head_loss_pair(workspace, torch.device("cuda"))
    fused = fused_head_loss(model, torch.device("cuda"))
    assert fused is not None
    results = []
    for head_loss in (None, fused):
        model.zero_grad(set_to_none=True)
        total, _weight = batch_loss(
            model, batch, TaskType.CAUSAL_LM, varlen=False, head_loss=head_loss
        )
        total.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((total.item(), grads))
    (plain, plain_grads), (liger, liger_grads) = results
    assert liger == pytest.approx(plain, rel=1e-4)
    for a, b in zip(plain_grads, liger_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
    reason="needs a CUDA device and liger-kernel (the `liger` extra)",
)
def test_on_cuda_liger_layer_kernels_keep_the_loss(workspace: dict[str, Any]) -> None:
    """Eager layers on CUDA get Liger's RMSNorm, RoPE and SwiGLU: the same loss, other kernels."""
    model, batch = _head_loss_pair(workspace, torch.device("cuda"))
    with torch.no_grad():
        plain, _ = batch_loss(model, batch, TaskType.CAUSAL_LM, varlen=False)
    assert liger_layer_kernels(model, torch.device("cuda")) is None
    with torch.no_grad():
        fused, _ = batch_loss(model, batch, TaskType.CAUSAL_LM, varlen=False)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-3)


def test_causal_lm_trains_packed_on_prompt_completion_and_chat_rows(
    workspace: dict[str, Any],
) -> None:
    plan = make_plan(
        workspace,
        task=TaskType.CAUSAL_LM,
        adapter=AdapterSpec(rank=4, target_preset=TargetPreset.ALL_LINEAR),
        packing=True,
        gradient_checkpointing=True,
        learning_rate_schedule=None,
        prefix="jobs/causal",
    )
    messages = train(plan)
    (started,) = of(WorkerStarted, messages)
    assert started.hyperparameters.packing is True
    assert started.train_examples > 0
    validations = [m.validation_loss for m in of(WorkerProgress, messages) if m.validation_loss]
    assert len(validations) == 2
    last = of(WorkerCheckpoint, messages)[-1]
    folder = local(workspace, last.artifact_uri)
    config = json.loads((folder / "adapter_config.json").read_text())
    attached = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert {"gate_proj", "up_proj", "down_proj", "q_proj"} <= attached
    # the tokenizer it trained with: reported, and written into the folder itself
    fingerprint = last.tokenizer_fingerprint
    assert fingerprint is not None
    assert fingerprint.chat_template_sha256  # the tiny model's chat template
    assert fingerprint.max_sequence_length == started.hyperparameters.max_seq_length
    metadata = read_adapter_metadata(folder)
    assert tokenizer_fingerprint_from_extra(metadata.extra) == fingerprint


def _step_losses(messages: list[WorkerMessage]) -> list[float]:
    return [m.train_loss for m in of(WorkerProgress, messages) if m.log_point]


def test_token_budget_micro_batches_give_the_example_batchs_losses(
    workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packed micro-batches of up to 48 tokens, accumulated to the step's 8 examples, train
    to the same losses (fp32) as one micro-batch of the 8 examples."""
    plan = make_plan(
        workspace, task=TaskType.CAUSAL_LM, packing=True, max_steps=3, prefix="jobs/budget-a"
    )
    by_examples = train(plan)
    packed: list[tuple[int, int]] = []

    def watched(examples: Any) -> Any:
        batch = pack_batch(examples)
        packed.append((batch.tokens, batch.examples))
        return batch

    monkeypatch.setattr(loop, "pack_batch", watched)
    by_tokens = train(dataclasses.replace(plan, micro_batch_tokens=48, artifact_prefix="jobs/b"))
    assert len(packed) > 3  # more micro-batches than steps: the budget cut them
    # training's within the budget, validation's (no gradients) within twice it
    assert all(tokens <= 2 * 48 or examples == 1 for tokens, examples in packed)
    assert any(tokens <= 48 and examples > 1 for tokens, examples in packed)
    expected, actual = _step_losses(by_examples), _step_losses(by_tokens)
    assert len(actual) == 3
    assert actual == pytest.approx(expected, abs=1e-5)


def test_losses_stay_on_the_device_until_a_progress_point_reads_them_together(
    workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No read-back (a device synchronisation) per step or micro-batch: 8 steps with loss
    points every 4 read their losses back twice, 4 at a time."""
    reads: list[list[float]] = []
    read_back = loop.read_back

    def watched(losses: list[torch.Tensor]) -> list[float]:
        reads.append(read_back(losses))
        return reads[-1]

    monkeypatch.setattr(loop, "_LOSS_POINTS", 2)
    monkeypatch.setattr(loop, "_PROGRESS_EVERY_SECONDS", 1e9)
    monkeypatch.setattr(loop, "read_back", watched)
    plan = make_plan(
        workspace,
        stopping=StoppingRules(eval_every_n_steps=8),
        checkpointing=CheckpointPolicy(every_n_steps=8),
        max_steps=8,
        batch_size=4,
        prefix="jobs/lazy-losses",
    )
    messages = train(plan)
    assert [len(values) for values in reads] == [4, 4]
    points = [m for m in of(WorkerProgress, messages) if m.log_point]
    assert [p.step for p in points] == [4, 8]
    assert points[0].train_loss == pytest.approx(sum(reads[0]) / 4)
    assert of(WorkerFinished, messages)[0].final_train_loss == reads[1][-1]


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")),
    reason="torch.compile on the CPU (inductor) needs a C++ compiler, and none is installed",
)
def test_compiled_decoder_layers_train_to_the_eager_losses(workspace: dict[str, Any]) -> None:
    plan = make_plan(
        workspace, task=TaskType.CAUSAL_LM, packing=True, max_steps=3, prefix="jobs/eager"
    )
    eager = train(dataclasses.replace(plan, compile_layers=False))
    compiled = train(dataclasses.replace(plan, compile_layers=True, artifact_prefix="jobs/comp"))
    assert of(WorkerStarted, compiled)[0].fallbacks == ()  # it did compile
    assert _step_losses(compiled) == pytest.approx(_step_losses(eager), rel=1e-4)
    # the compiled layers' weights are saved under the eager names
    eager_uri = of(WorkerCheckpoint, eager)[-1].artifact_uri
    compiled_uri = of(WorkerCheckpoint, compiled)[-1].artifact_uri
    eager_weights = load_file(local(workspace, eager_uri) / "adapter_model.safetensors")
    compiled_weights = load_file(local(workspace, compiled_uri) / "adapter_model.safetensors")
    assert eager_weights.keys() == compiled_weights.keys()


def test_a_failing_compile_falls_back_to_eager_with_a_reported_fallback(
    workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_backend(graph: Any, inputs: Any) -> Any:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(compilation, "COMPILE_BACKEND", broken_backend)
    plan = make_plan(workspace, task=TaskType.CAUSAL_LM, max_steps=2, prefix="jobs/nocomp")
    messages = train(dataclasses.replace(plan, compile_layers=True))
    (fallback,) = of(WorkerStarted, messages)[0].fallbacks
    assert (fallback.feature, fallback.reason) == ("compile", "compile_failed")
    assert "no compiler here" in fallback.detail
    assert of(WorkerFinished, messages)[0].stop_reason is StopReason.MAX_STEPS


def test_a_halted_run_resumes_exactly_where_it_stopped(workspace: dict[str, Any]) -> None:
    policy = CheckpointPolicy(every_n_steps=3)
    whole = train(make_plan(workspace, checkpointing=policy, max_steps=12, prefix="jobs/whole"))
    signals = StopSignals()
    first: list[WorkerMessage] = []

    def report(message: WorkerMessage) -> None:
        first.append(message)
        if isinstance(message, WorkerCheckpoint) and message.step == 6:
            signals.halt = True  # the service goes away right after this checkpoint

    plan = make_plan(workspace, checkpointing=policy, max_steps=12, prefix="jobs/resumed")
    with pytest.raises(TrainingHalted):
        run_training(plan, report, signals)
    state = of(WorkerCheckpoint, first)[-1].state_uri
    second = train(dataclasses.replace(plan, resume_state_uri=state))
    (started,) = of(WorkerStarted, second)
    assert started.step == 6
    assert [c.step for c in of(WorkerCheckpoint, second)] == [9, 12]
    expected = {c.step: c for c in of(WorkerCheckpoint, whole)}
    for checkpoint in of(WorkerCheckpoint, second):
        reference = expected[checkpoint.step]
        assert checkpoint.train_loss == pytest.approx(reference.train_loss, rel=1e-5)
        if reference.validation_loss is None:
            assert checkpoint.validation_loss is None
        else:
            assert checkpoint.validation_loss == pytest.approx(reference.validation_loss, rel=1e-5)
        assert checkpoint.tokens_seen == reference.tokens_seen


def test_a_halt_between_checkpoints_writes_one_and_the_resumed_run_loses_no_step(
    workspace: dict[str, Any],
) -> None:
    """The service stops (a halt) three steps after its last checkpoint: the worker writes a
    checkpoint of those steps before it goes, and the next attempt starts there."""
    stopping = StoppingRules(eval_every_n_steps=3)
    policy = CheckpointPolicy(every_n_steps=1000)  # only the final one on schedule
    whole = train(
        make_plan(
            workspace, stopping=stopping, checkpointing=policy, max_steps=6, prefix="jobs/whole"
        )
    )
    signals = StopSignals()
    first: list[WorkerMessage] = []

    def report(message: WorkerMessage) -> None:
        first.append(message)
        if isinstance(message, WorkerProgress) and message.step == 3:
            signals.halt = True

    plan = make_plan(
        workspace, stopping=stopping, checkpointing=policy, max_steps=6, prefix="jobs/halted"
    )
    with pytest.raises(TrainingHalted):
        run_training(plan, report, signals)
    (kept,) = of(WorkerCheckpoint, first)
    assert kept.step == 3
    assert not kept.is_final, "an ordinary checkpoint: the job is not over"
    assert not of(WorkerFinished, first)

    second = train(dataclasses.replace(plan, resume_state_uri=kept.state_uri))
    (started,) = of(WorkerStarted, second)
    assert started.step == 3
    (final,) = of(WorkerCheckpoint, second)
    (reference,) = of(WorkerCheckpoint, whole)
    assert final.step == reference.step == 6
    assert final.tokens_seen == reference.tokens_seen
    # the same weights at step 6 (a checkpoint's train loss is the mean since the last one,
    # so it differs by definition; the validation loss at the same step does not)
    assert reference.validation_loss is not None
    assert final.validation_loss == pytest.approx(reference.validation_loss, rel=1e-5)


def test_cancel_stops_between_steps_and_writes_a_final_checkpoint(
    workspace: dict[str, Any],
) -> None:
    signals = StopSignals()
    messages: list[WorkerMessage] = []

    def report(message: WorkerMessage) -> None:
        messages.append(message)
        if isinstance(message, WorkerProgress) and message.step == 3:
            signals.cancel = True

    plan = make_plan(
        workspace,
        stopping=StoppingRules(eval_every_n_steps=3),
        checkpointing=CheckpointPolicy(every_n_steps=1000),
        max_steps=1000,
        prefix="jobs/cancel",
    )
    run_training(plan, report, signals)
    (finished,) = of(WorkerFinished, messages)
    assert finished.cancelled
    assert finished.stop_reason is None
    assert finished.step == 3
    (final,) = of(WorkerCheckpoint, messages)
    assert final.step == 3
    assert final.is_final
    # final, but partly trained: it says so, so that nothing promotes it as the job's result
    assert final.stop_reason is StopReason.CANCELLED


def test_an_exhausted_budget_ends_the_run_after_its_step_with_a_validated_final_checkpoint(
    workspace: dict[str, Any],
) -> None:
    signals = StopSignals()
    messages: list[WorkerMessage] = []

    def report(message: WorkerMessage) -> None:
        messages.append(message)
        if isinstance(message, WorkerProgress) and message.step == 2:
            signals.budget_exhausted = True  # what the supervisor sends when the cost reaches it

    plan = make_plan(
        workspace,
        stopping=StoppingRules(eval_every_n_steps=2),  # a progress report at step 2
        checkpointing=CheckpointPolicy(every_n_steps=1000),
        max_steps=1000,
        prefix="jobs/budget",
    )
    run_training(plan, report, signals)
    (finished,) = of(WorkerFinished, messages)
    assert not finished.cancelled  # a stopping rule: the job succeeds with what it trained
    assert finished.stop_reason is StopReason.BUDGET_EXHAUSTED
    assert finished.step == 3  # the step under way when the signal came is finished
    (final,) = of(WorkerCheckpoint, messages)
    assert (final.step, final.is_final) == (3, True)
    assert final.stop_reason is StopReason.BUDGET_EXHAUSTED
    assert final.validation_loss is not None  # validated as it stopped, like a time limit


def test_early_stopping_ends_an_overfitting_run_and_keeps_the_best(
    workspace: dict[str, Any],
) -> None:
    rows = sentiment_rows(64, seed=1)
    split = write_split(workspace["root"] / "flipped", rows, validation_fraction=0.5)
    validation = set(split.validation_ids)
    flip = {"pos": "neg", "neg": "pos"}
    # validation labels contradict train: the better the model fits train, the worse validation
    flipped = [
        {**r, "label": flip[r["label"]] if r["id"] in validation else r["label"]} for r in rows
    ]
    split = write_split(workspace["root"] / "flipped", flipped, validation_fraction=0.5)
    plan = make_plan(
        workspace,
        split=split,
        stopping=StoppingRules(eval_every_n_steps=2, early_stopping_patience=3),
        learning_rate=2e-2,
        max_steps=200,
        prefix="jobs/overfit",
    )
    messages = train(plan)
    (finished,) = of(WorkerFinished, messages)
    assert finished.stop_reason is StopReason.EARLY_STOPPING
    assert finished.step < 200
    losses = [m.validation_loss for m in of(WorkerProgress, messages) if m.validation_loss]
    assert min(losses) < losses[-1]  # it stopped because validation got worse
    assert min(losses[-3:]) > min(losses)  # the last `patience` validations never improved
    checkpoints = of(WorkerCheckpoint, messages)
    best = min(checkpoints, key=lambda c: c.validation_loss)
    assert best.step < checkpoints[-1].step  # the best one is kept, and it is not the last


def test_out_of_memory_is_retried_once_with_half_the_micro_batch(workspace: dict[str, Any]) -> None:
    plan = make_plan(workspace, batch_size=8, max_steps=4, prefix="jobs/oom")
    messages = train(dataclasses.replace(plan, fault_oom_above_batch=4))
    (retry,) = of(WorkerOomRetry, messages)
    assert (retry.micro_batch_size, retry.accumulation_steps) == (4, 2)
    assert retry.resume_step == 0
    (finished,) = of(WorkerFinished, messages)
    assert finished.stop_reason is StopReason.MAX_STEPS
    with pytest.raises(TrainingFailure) as raised:
        train(dataclasses.replace(plan, fault_oom_above_batch=2, artifact_prefix="jobs/oom2"))
    assert raised.value.reason is FailureReason.OUT_OF_MEMORY
    assert "micro-batch of 4" in raised.value.message


def test_out_of_memory_is_released_after_leaving_the_handler(
    workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the error is being handled its traceback pins the failed step's tensors: memory
    is released once no exception is in flight, and the failed session is gone by then."""
    releases: list[tuple[object, int]] = []
    release = loop.release_memory

    def watched(device: torch.device) -> None:
        release(device)
        live = sum(type(o) is loop.TrainingSession for o in gc.get_objects())
        releases.append((sys.exc_info()[1], live))

    monkeypatch.setattr(loop, "release_memory", watched)
    plan = make_plan(workspace, batch_size=8, max_steps=2, prefix="jobs/oom-release")
    messages = train(dataclasses.replace(plan, fault_oom_above_batch=4))
    assert len(of(WorkerOomRetry, messages)) == 1
    assert releases == [(None, 0)]  # no exception in flight, no session left to hold memory


def test_the_grad_scaler_state_is_checkpointed_and_restored(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu")
    scaled = {
        "scale": 512.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 37,
    }
    scaler.load_state_dict(scaled)
    save_training_state(
        tmp_path, model=model, optimizer=optimizer, position=LoopPosition(step=5), scaler=scaler
    )
    fresh = torch.amp.GradScaler("cpu")
    position = load_training_state(tmp_path, model=model, optimizer=optimizer, scaler=fresh)
    assert position.step == 5
    assert fresh.state_dict() == scaler.state_dict()
    assert fresh.get_scale() == 512.0


def test_random_generators_are_restored_in_a_defined_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_training_state(tmp_path, model=model, optimizer=optimizer, position=LoopPosition())
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    # twelve CUDA devices saved: device 10 is restored after device 9, not after device 1
    devices = 12
    rng = load_file(str(tmp_path / state_module.RNG_FILE))
    rng.update({f"cuda.{i}": torch.full((4,), i, dtype=torch.uint8) for i in range(devices)})
    save_file(rng, str(tmp_path / state_module.RNG_FILE))
    order: list[str] = []
    restore = (random.setstate, np.random.set_state, torch.set_rng_state)
    monkeypatch.setattr(random, "setstate", lambda s: (order.append("python"), restore[0](s)))
    monkeypatch.setattr(np.random, "set_state", lambda s: (order.append("numpy"), restore[1](s)))
    monkeypatch.setattr(torch, "set_rng_state", lambda s: (order.append("torch"), restore[2](s)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    monkeypatch.setattr(
        torch.cuda,
        "set_rng_state_all",
        lambda states: order.append("cuda " + " ".join(str(int(t[0])) for t in states)),
    )
    load_training_state(tmp_path, model=model, optimizer=optimizer)
    assert order == ["python", "numpy", "torch", "cuda " + " ".join(map(str, range(devices)))]
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == drawn


#: Like templates that strip earlier turns' reasoning: an earlier answer is rewritten, so it
#: cannot be found in the whole conversation's rendering.
_REWRITING_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
    "[unused1] assistant : okay [SEP] {% else %}[unused1] {{ m['role'] }} : {{ m['content'] }} "
    "[SEP] {% endif %}{% endfor %}{% if add_generation_prompt %}[unused1] assistant : {% endif %}"
)


def test_rows_the_chat_template_cannot_mask_are_skipped_and_reported_not_fatal(
    workspace: dict[str, Any],
) -> None:
    folder = workspace["root"] / "llama-rewriting"
    build_tiny_llama(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = _REWRITING_CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    two_answers = [
        {
            "id": f"two-{i}",
            "messages": [
                {"role": "user", "content": f"hi {i}"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and again"},
                {"role": "assistant", "content": "hello again"},
            ],
        }
        for i in range(6)
    ]
    plain = [
        {"id": f"p-{i}", "prompt": f"question {i} is", "completion": " answer"} for i in range(24)
    ]
    split = write_split(workspace["root"] / "rewritten", two_answers + plain, validation_fraction=0)
    model = resolve_base_model(model_path=str(folder), models_root=workspace["root"])
    plan = dataclasses.replace(
        make_plan(workspace, task=TaskType.CAUSAL_LM, split=split, max_steps=2, prefix="jobs/mask"),
        model_dir=str(model.path),
        base_model=BaseModelRef(
            model_path=str(folder), files_sha256=model.files_sha256, model_type="llama"
        ),
    )
    messages = train(plan)
    (started,) = of(WorkerStarted, messages)
    (skipped,) = started.skipped_rows
    assert skipped.reason is RowSkipReason.UNMASKABLE_CHAT
    assert skipped.count == 6
    assert set(skipped.example_row_ids) == {f"two-{i}" for i in range(6)}
    assert started.train_examples == 24
    assert of(WorkerFinished, messages)[0].stop_reason is StopReason.MAX_STEPS


def test_changed_model_files_and_corrupt_data_fail_with_their_reason(
    workspace: dict[str, Any],
) -> None:
    plan = make_plan(workspace, prefix="jobs/broken")
    changed = dataclasses.replace(
        plan, base_model=dataclasses.replace(plan.base_model, files_sha256="0" * 64)
    )
    with pytest.raises(TrainingFailure) as raised:
        train(changed)
    assert raised.value.reason is FailureReason.MODEL_LOAD_FAILED
    with pytest.raises(TrainingFailure) as raised:
        train(dataclasses.replace(plan, manifest_sha256="0" * 64))
    assert raised.value.reason is FailureReason.DATA_UNAVAILABLE


def test_a_diverging_run_fails_with_non_finite_loss(workspace: dict[str, Any]) -> None:
    plan = make_plan(
        workspace, learning_rate=1e30, max_grad_norm=1e30, max_steps=50, prefix="jobs/nan"
    )
    with pytest.raises(TrainingFailure) as raised:
        train(plan)
    assert raised.value.reason is FailureReason.NON_FINITE_LOSS


def _reference_varlen(  # noqa: PLR0917 - torch's varlen_attn signature
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
    *,
    scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    enable_gqa: bool = False,
) -> torch.Tensor:
    """What the CUDA varlen kernel computes, in plain torch: causal attention per sequence."""
    assert window_size == (-1, 0)
    assert torch.equal(cu_seq_q, cu_seq_k)
    outputs = []
    bounds = cu_seq_q.tolist()
    for start, end in itertools.pairwise(bounds):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        outputs.append(
            torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, enable_gqa=enable_gqa
            ).transpose(0, 1)
        )
    return torch.cat(outputs)


def test_the_varlen_attention_path_computes_the_padded_loss(
    workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA kernel is not here; its plumbing is: cu_seq_lens travel through peft and the
    model to the registered attention function, shapes in and out are right."""
    monkeypatch.setattr(attention, "varlen_attn", _reference_varlen)
    _packed_equals_padded(workspace)


def _packed_equals_padded(workspace: dict[str, Any]) -> None:
    """The tiny Llama (4 query heads, 2 K/V heads) gives the same loss packed through the
    registered varlen attention (whatever ``varlen_attn`` is now) as padded through sdpa."""
    attention.register_varlen_attention()
    folder = workspace["models"] / "llama"
    tokenizer = load_tokenizer(folder)
    plain = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    varlen = get_peft_model(
        AutoModelForCausalLM.from_pretrained(
            folder, attn_implementation=attention.VARLEN_ATTENTION
        ),
        LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"]),
    ).eval()  # a fresh LoRA adapter is a no-op (B = 0): the same function as the base
    rows = [
        {"id": "a", "prompt": "one two", "completion": " three"},
        {"id": "b", "prompt": "four five six seven", "completion": " eight nine"},
    ]
    examples = encode_rows(tokenizer, rows, "causal_lm", max_length=64)
    with torch.no_grad():
        expected, _ = batch_loss(
            plain, pad_batch(examples, tokenizer.pad_token_id), TaskType.CAUSAL_LM, varlen=False
        )
        packed, weight = batch_loss(varlen, pack_batch(examples), TaskType.CAUSAL_LM, varlen=True)
    assert int(weight) == sum(e.loss_tokens for e in examples)
    assert packed.item() == pytest.approx(expected.item(), rel=1e-5)


def _torch_2_9_varlen(  # noqa: PLR0917 - torch 2.9's varlen_attn signature
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
    is_causal: bool = False,
    return_aux: object = None,
) -> torch.Tensor:
    """torch 2.9.1's ``varlen_attn`` (the production trainer image): ``is_causal`` only, no
    ``scale``, ``window_size`` or ``enable_gqa``; as many K/V heads as query heads."""
    assert is_causal
    assert key.shape[1] == query.shape[1], "2.9 is given one K/V head per query head"
    return _reference_varlen(
        query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size=(-1, 0)
    )


def test_the_varlen_path_runs_on_torch_2_9s_signature(
    workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attention, "varlen_attn", _torch_2_9_varlen)
    _packed_equals_padded(workspace)
    # a softmax scale other than 1/sqrt(dim) is folded into the query
    q, k, v = (torch.randn(7, 4, 8) for _ in range(3))
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    scaled = attention.call_varlen(q, k[:, :2], v[:, :2], cu, 4, scaling=0.2)
    expected = _reference_varlen(
        q, k[:, :2], v[:, :2], cu, cu, 4, 4, scale=0.2, window_size=(-1, 0), enable_gqa=True
    )
    assert torch.allclose(scaled, expected, atol=1e-5)


def test_packing_without_a_usable_varlen_kernel_is_a_reported_fallback(
    workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_causal_option(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k):  # noqa: PLR0917
        raise AssertionError("never called without a causal option")

    monkeypatch.setattr(attention, "varlen_attn", no_causal_option)
    plan = make_plan(workspace, task=TaskType.CAUSAL_LM, prefix="jobs/fallback")
    hp = dataclasses.replace(
        resolve_for_device(plan.hyperparameters, TaskType.CAUSAL_LM, cuda=True), packing=True
    )
    implementation, fallback = preparation.attention_for(plan, hp, torch.device("cuda"))
    assert implementation is None
    assert fallback is not None
    assert (fallback.feature, fallback.reason) == ("packing", "unsupported_signature")
    assert "is_causal" in fallback.detail
    assert (
        preparation.attention_for(
            plan, dataclasses.replace(hp, packing=False), torch.device("cuda")
        )[1]
        is None
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_packed_varlen_batches_train_in_bf16(workspace: dict[str, Any]) -> None:
    folder = workspace["root"] / "llama-cuda"
    build_tiny_llama(folder, layers=2, hidden=128)  # head_dim 32: flash-attention sized
    device = torch.device("cuda")
    config = json.loads((folder / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    assert attention.varlen_attention_available(
        device, torch.bfloat16, heads=heads, kv_heads=kv_heads, head_dim=128 // heads
    )
    attention.register_varlen_attention()
    tokenizer = load_tokenizer(folder)
    rows = [
        {"id": "a", "prompt": "one two", "completion": " three"},
        {"id": "b", "prompt": "four five six seven", "completion": " eight nine"},
    ]
    examples = encode_rows(tokenizer, rows, "causal_lm", max_length=64)
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    varlen = (
        AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.bfloat16, attn_implementation=attention.VARLEN_ATTENTION
        )
        .to(device)
        .eval()
    )
    with torch.no_grad():
        padded = pad_batch(examples, tokenizer.pad_token_id).to(device)
        expected, _ = batch_loss(plain, padded, TaskType.CAUSAL_LM, varlen=False)
        packed, _ = batch_loss(
            varlen, pack_batch(examples).to(device), TaskType.CAUSAL_LM, varlen=True
        )
    assert packed.item() == pytest.approx(expected.item(), rel=2e-2)  # bf16

    model = resolve_base_model(model_path=str(folder), models_root=workspace["root"])
    plan = dataclasses.replace(
        make_plan(workspace, task=TaskType.CAUSAL_LM, prefix="jobs/cuda"),
        model_dir=str(model.path),
        base_model=BaseModelRef(
            model_path=str(folder), files_sha256=model.files_sha256, model_type="llama"
        ),
        device="cuda",
    )
    messages = train(plan)
    (started,) = of(WorkerStarted, messages)
    assert started.hyperparameters.packing is True  # on by default on CUDA
    assert started.hyperparameters.precision is not None
    assert started.hyperparameters.precision.value == "BF16"
    assert started.device_type.startswith("cuda:")
    assert of(WorkerFinished, messages)[0].stop_reason is StopReason.MAX_STEPS


def test_checkpoints_go_to_an_s3_store_and_a_resume_reads_its_state_back(
    workspace: dict[str, Any], s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    """The worker opens the trainer's store from the plan: on S3, checkpoints are folder
    artifacts there and a resume materializes the state it names."""
    policy = CheckpointPolicy(every_n_steps=3)
    plan = dataclasses.replace(
        make_plan(workspace, checkpointing=policy, max_steps=6, prefix="jobs/s3"),
        artifact_root=f"s3://{s3_bucket}/trainer",
        artifact_s3_endpoint_url=s3_endpoint,
    )
    signals = StopSignals()
    first: list[WorkerMessage] = []

    def report(message: WorkerMessage) -> None:
        first.append(message)
        if isinstance(message, WorkerCheckpoint) and message.step == 3:
            signals.halt = True

    with pytest.raises(TrainingHalted):
        run_training(plan, report, signals)
    [halted_at] = of(WorkerCheckpoint, first)
    assert halted_at.state_uri.startswith(f"s3://{s3_bucket}/trainer/jobs/s3/states/")
    second = train(dataclasses.replace(plan, resume_state_uri=halted_at.state_uri))
    (started,) = of(WorkerStarted, second)
    assert started.step == 3
    final = of(WorkerCheckpoint, second)[-1]
    store = artifact_store_from_uri(plan.artifact_root, s3_endpoint_url=s3_endpoint)
    folder = store.materialize(final.artifact_uri)
    assert folder_sha256(folder) == final.sha256  # the checkpoint contract's digest
    assert (folder / "adapter_config.json").is_file()


def test_a_full_disk_at_a_checkpoint_keeps_no_half_checkpoint_and_resumes_from_the_last(
    workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while the step-6 state is written: the worker reports a resumable full disk,
    the step-6 adapter already stored is removed (a checkpoint is adapter and state), and a
    resume from the step-3 state, once space is back, trains on to the end."""
    from services.trainer.adapters.worker import train_and_report  # noqa: PLC0415

    policy = CheckpointPolicy(every_n_steps=3)
    plan = make_plan(workspace, checkpointing=policy, max_steps=9, prefix="jobs/full-disk")
    root = Path(plan.artifact_root)
    real_put = LocalArtifactStore.put_directory

    def put_until_the_disk_fills(self: LocalArtifactStore, key: str, source: Path) -> Any:
        if key.endswith("states/step-6"):
            raise OSError(28, "No space left on device")
        return real_put(self, key, source)

    reports: list[WorkerMessage] = []
    with monkeypatch.context() as full:
        full.setattr(LocalArtifactStore, "put_directory", put_until_the_disk_fills)
        train_and_report(plan, reports.append, StopSignals())
    disk_full = [m for m in reports if isinstance(m, WorkerDiskFull)]
    assert len(disk_full) == 1
    assert "No space left on device" in disk_full[0].message
    assert [c.step for c in of(WorkerCheckpoint, reports)] == [3]
    jobs = root / "jobs" / "full-disk"
    assert sorted(p.name for p in (jobs / "checkpoints").iterdir()) == ["step-3"]
    assert sorted(p.name for p in (jobs / "states").iterdir()) == ["step-3"]
    assert list((root / ".tmp").rglob("dir-*")) == [], "no staging folder is left"

    last_good = of(WorkerCheckpoint, reports)[-1].state_uri
    resumed = train(dataclasses.replace(plan, resume_state_uri=last_good))
    (started,) = of(WorkerStarted, resumed)
    assert started.step == 3
    assert [c.step for c in of(WorkerCheckpoint, resumed)] == [6, 9]
    assert of(WorkerFinished, resumed)
