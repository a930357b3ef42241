"""Data-parallel training of one job on the CPU with gloo: real ``torchrun`` launches of the
engine on tiny real models, relayed through the worker protocol as the supervisor sees it.

Two ranks must reach what one process reaches at the same global batch (same losses at every
checkpoint, same final adapter, within fp32 rounding), a cancel must reach every rank, and a
service that goes away must take the ranks with it."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from safetensors.torch import load_file

from services.trainer.adapters.engine.distributed import DataParallelGroup
from services.trainer.adapters.engine.loop import run_training
from services.trainer.adapters.engine.signals import StopSignals
from services.trainer.adapters.torchrun import run_ranks
from services.trainer.adapters.worker import CANCEL
from services.trainer.domain.config import AdapterSpec, CheckpointPolicy, StoppingRules
from services.trainer.domain.launch import Sharding, device_slots, devices_in
from services.trainer.domain.worker_messages import (
    WorkerCheckpoint,
    WorkerFinished,
    WorkerMessage,
    WorkerPlan,
    WorkerProgress,
    WorkerStarted,
    decode_message,
)
from shared.artifacts import LocalArtifactStore
from shared.task_types import TaskType
from tests.fixtures.trainer_plans import engine_workspace, make_plan


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # no dropout anywhere: each rank draws its own masks, so only a dropout-free run can match
    # the single process to rounding
    return engine_workspace(
        tmp_path_factory.mktemp("data-parallel"),
        [{"prompt": f"question {i} is", "completion": f" answer {i % 5}"} for i in range(48)],
        bert_dropout=0.0,
    )


def _plan(
    workspace: dict[str, Any], task: TaskType, prefix: str, max_steps: int = 4, **changes: Any
) -> WorkerPlan:
    plan = make_plan(
        workspace,
        task=task,
        adapter=AdapterSpec(rank=4, dropout=0.0),
        stopping=StoppingRules(eval_every_n_steps=2),
        checkpointing=CheckpointPolicy(every_n_steps=2),
        prefix=prefix,
        max_steps=max_steps,
    )
    # four micro-batches per step: each rank gets some, unevenly by tokens
    return dataclasses.replace(plan, micro_batch_size=2, **changes)


def _launch(
    plan: WorkerPlan, on_message: Callable[[WorkerMessage, Any], None] | None = None
) -> list[WorkerMessage]:
    """Run ``plan``'s ranks as the worker does, reading what rank 0 reports as the
    supervisor does; returns once the whole launch has ended."""
    context = multiprocessing.get_context("spawn")
    messages_reader, messages_writer = context.Pipe(duplex=False)
    control_reader, control_writer = context.Pipe(duplex=False)
    launch = threading.Thread(target=run_ranks, args=(plan, messages_writer, control_reader))
    launch.start()
    received: list[WorkerMessage] = []
    while launch.is_alive() or messages_reader.poll():
        if messages_reader.poll(0.1):
            message = decode_message(messages_reader.recv())
            received.append(message)
            if on_message is not None:
                on_message(message, control_writer)
    launch.join()
    for connection in (messages_reader, messages_writer, control_reader, control_writer):
        connection.close()
    return received


def _of(kind: type, messages: list[WorkerMessage]) -> list[Any]:
    return [m for m in messages if isinstance(m, kind)]


def _adapter(workspace: dict[str, Any], uri: str) -> dict[str, torch.Tensor]:
    folder = LocalArtifactStore(workspace["root"] / "artifacts").local_path(uri)
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def test_two_ranks_reach_the_one_process_losses_and_adapter(workspace: dict[str, Any]) -> None:
    task = TaskType.CLASSIFICATION  # causal LM: the resume test below compares it the same way
    alone: list[WorkerMessage] = []
    run_training(_plan(workspace, task, f"jobs/alone-{task.value}"), alone.append, StopSignals())
    ranked = _launch(_plan(workspace, task, f"jobs/ranks-{task.value}", world_size=2))

    (started,) = _of(WorkerStarted, ranked)
    assert started.device_count == 2
    solo_checkpoints = _of(WorkerCheckpoint, alone)
    checkpoints = _of(WorkerCheckpoint, ranked)
    assert [c.step for c in checkpoints] == [c.step for c in solo_checkpoints] == [2, 4]
    for one, two in zip(solo_checkpoints, checkpoints, strict=True):
        assert two.train_loss == pytest.approx(one.train_loss, abs=1e-5)
        assert two.validation_loss == pytest.approx(one.validation_loss, abs=1e-5)
        assert two.tokens_seen == one.tokens_seen  # every micro-batch counted once
    (finished,) = _of(WorkerFinished, ranked)
    assert finished.step == 4
    assert not finished.cancelled
    solo_weights = _adapter(workspace, solo_checkpoints[-1].artifact_uri)
    weights = _adapter(workspace, checkpoints[-1].artifact_uri)
    assert weights.keys() == solo_weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, solo_weights[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("task", [TaskType.CAUSAL_LM, TaskType.CLASSIFICATION])
def test_fully_sharded_ranks_reach_the_one_process_losses_and_adapter_and_resume(
    workspace: dict[str, Any], task: TaskType
) -> None:
    # one FSDP2 unit per decoder layer (Llama) or encoder layer (BERT, whose trained head
    # copy stays whole like the adapter)
    alone: list[WorkerMessage] = []
    run_training(
        _plan(workspace, task, f"jobs/alone-sharded-{task.value}"), alone.append, StopSignals()
    )
    sharded = _plan(
        workspace,
        task,
        f"jobs/sharded-{task.value}",
        world_size=2,
        sharding=Sharding.FULLY_SHARDED,
    )
    ranked = _launch(sharded)

    solo_checkpoints = _of(WorkerCheckpoint, alone)
    checkpoints = _of(WorkerCheckpoint, ranked)
    assert [c.step for c in checkpoints] == [c.step for c in solo_checkpoints] == [2, 4]
    for one, two in zip(solo_checkpoints, checkpoints, strict=True):
        assert two.train_loss == pytest.approx(one.train_loss, abs=1e-5)
        assert two.validation_loss == pytest.approx(one.validation_loss, abs=1e-5)
        assert two.tokens_seen == one.tokens_seen  # lock-step passes count no tokens
    (finished,) = _of(WorkerFinished, ranked)
    assert finished.step == 4
    solo_weights = _adapter(workspace, solo_checkpoints[-1].artifact_uri)
    weights = _adapter(workspace, checkpoints[-1].artifact_uri)
    assert weights.keys() == solo_weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, solo_weights[name], atol=1e-5, rtol=0)

    # the sharded run's step-2 state resumes in one process to the same adapter
    resumed: list[WorkerMessage] = []
    run_training(
        _plan(
            workspace,
            task,
            f"jobs/sharded-resumed-{task.value}",
            resume_state_uri=checkpoints[0].state_uri,
        ),
        resumed.append,
        StopSignals(),
    )
    final = _of(WorkerCheckpoint, resumed)[-1]
    assert final.step == 4
    for name, tensor in _adapter(workspace, final.artifact_uri).items():
        torch.testing.assert_close(tensor, solo_weights[name], atol=1e-5, rtol=0)


def test_fully_sharded_ranks_run_as_many_passes_as_the_busiest() -> None:
    lengths = [50, 10, 10, 10, 10, 10, 40, 5]
    batches = [[0], [1, 2], [3], [4, 5], [6], [7]]
    ranks = [DataParallelGroup(r, 3, r, fully_sharded=True) for r in range(3)]
    shares = [rank.share(batches, lengths) for rank in ranks]
    busiest = max(len(share) for share in shares)
    for rank, share in zip(ranks, shares, strict=True):
        assert len(share) + rank.passes_short(batches, lengths) == busiest
        assert len(rank.shard(7)) + rank.shard_passes_short(7) == 3
    # a step with fewer micro-batches than ranks: the idle rank still runs one pass
    assert [rank.passes_short([[0]], lengths) for rank in ranks] == [0, 1, 1]
    replicated = DataParallelGroup(1, 3, 1)  # whole weights: no collective in a forward
    assert replicated.passes_short(batches, lengths) == replicated.shard_passes_short(7) == 0


@pytest.mark.parametrize("sharding", list(Sharding))
def test_a_cancel_reaches_every_rank_and_ends_the_launch_with_a_final_checkpoint(
    workspace: dict[str, Any], sharding: Sharding
) -> None:
    plan = _plan(
        workspace,
        TaskType.CLASSIFICATION,
        f"jobs/ranks-cancel-{sharding.value}",
        max_steps=1000,
        world_size=2,
        sharding=sharding,
        fault_hold_after_step=1,  # rank 0 waits after step 1; the other rank waits for it
    )
    plan = dataclasses.replace(
        plan, hyperparameters=dataclasses.replace(plan.hyperparameters, max_steps=1000)
    )
    cancelled = threading.Event()

    def cancel_after_the_first_step(message: WorkerMessage, control: Any) -> None:
        if isinstance(message, WorkerProgress) and message.step >= 1 and not cancelled.is_set():
            cancelled.set()
            control.send(CANCEL)

    messages = _launch(plan, cancel_after_the_first_step)  # returns: every rank has exited
    (finished,) = _of(WorkerFinished, messages)
    assert finished.cancelled
    assert finished.step == 1
    (final,) = _of(WorkerCheckpoint, messages)
    assert final.step == 1
    assert final.is_final


def test_a_service_that_goes_away_takes_the_ranks_with_it(workspace: dict[str, Any]) -> None:
    plan = _plan(
        workspace,
        TaskType.CLASSIFICATION,
        "jobs/ranks-halt",
        max_steps=1000,
        world_size=2,
        fault_hold_after_step=1,
    )
    plan = dataclasses.replace(
        plan, hyperparameters=dataclasses.replace(plan.hyperparameters, max_steps=1000)
    )

    def die_after_the_first_step(message: WorkerMessage, control: Any) -> None:
        if isinstance(message, WorkerProgress) and message.step >= 1:
            control.close()  # what a SIGKILLed service leaves its worker

    messages = _launch(plan, die_after_the_first_step)  # returns: the launch has ended
    # halted, not finished: nothing claims the job ended; it resumes from its checkpoint
    assert not _of(WorkerFinished, messages)
    assert [c.step for c in _of(WorkerCheckpoint, messages)] == []


def _kill_rank(plan_prefix: str, rank: int) -> int:
    """SIGKILL the rank ``rank`` process of the launch training ``plan_prefix``; its pid."""
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if (
            "services.trainer.adapters.torchrun" not in command
            or "torch.distributed.run" in command
        ):
            continue
        try:
            environment = process.environ()
        except psutil.Error:
            continue
        plan = Path(process.info["cmdline"][-2])
        if environment.get("RANK") == str(rank) and plan_prefix in plan.read_text():
            process.kill()
            return process.pid
    raise AssertionError(f"no rank {rank} of {plan_prefix} is running")


def test_a_rank_killed_mid_run_resumes_to_the_adapter_an_uninterrupted_run_makes(
    workspace: dict[str, Any],
) -> None:
    alone: list[WorkerMessage] = []
    task = TaskType.CAUSAL_LM
    run_training(_plan(workspace, task, "jobs/alone-killed"), alone.append, StopSignals())
    # rank 0 holds after step 2 (its checkpoint written); rank 1 waits for it in step 3
    plan = _plan(workspace, task, "jobs/ranks-killed", world_size=2, fault_hold_after_step=2)
    killed: list[int] = []

    def kill_rank_one(message: WorkerMessage, _control: Any) -> None:
        if isinstance(message, WorkerCheckpoint) and message.step == 2 and not killed:
            killed.append(_kill_rank("jobs/ranks-killed", 1))

    crashed = _launch(plan, kill_rank_one)  # returns: torchrun ended the whole launch
    assert killed
    assert not _of(WorkerFinished, crashed)  # a crashed attempt, as the supervisor sees it
    (checkpoint,) = _of(WorkerCheckpoint, crashed)
    # what the supervisor does next: the next attempt from the last state
    resumed = _launch(dataclasses.replace(plan, resume_state_uri=checkpoint.state_uri))
    (finished,) = _of(WorkerFinished, resumed)
    assert finished.step == 4
    final = _of(WorkerCheckpoint, resumed)[-1]
    solo_final = _of(WorkerCheckpoint, alone)[-1]
    assert final.train_loss == pytest.approx(solo_final.train_loss, abs=1e-5)
    weights = _adapter(workspace, final.artifact_uri)
    solo_weights = _adapter(workspace, solo_final.artifact_uri)
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, solo_weights[name], atol=1e-5, rtol=0)


def test_a_step_s_micro_batches_are_shared_by_tokens_each_to_exactly_one_rank() -> None:
    lengths = [50, 10, 10, 10, 10, 10, 40, 5]
    batches = [[0], [1, 2], [3], [4, 5], [6], [7]]
    shares = [DataParallelGroup(rank=r, world_size=3).share(batches, lengths) for r in range(3)]
    assert sorted(b for share in shares for b in map(tuple, share)) == sorted(map(tuple, batches))
    tokens = [sum(lengths[i] for batch in share for i in batch) for share in shares]
    assert tokens == [50, 50, 45]  # heaviest first, each to the lightest rank so far
    for share in shares:  # each rank keeps the step's order
        assert share == [b for b in batches if b in share]
    assert DataParallelGroup().share(batches, lengths) == batches


def test_data_parallel_jobs_take_a_slot_of_devices_and_pay_for_each() -> None:
    devices = ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:4"]
    assert device_slots(devices, 1) == devices
    assert device_slots(devices, 2) == ["cuda:0,cuda:1", "cuda:2,cuda:3"]
    assert device_slots(["cpu"], 4) == ["cpu"]  # CPU ranks share the node's cores
    assert devices_in("cuda:0,cuda:1") == 2
    assert devices_in("cpu") == 1
    assert (
        DataParallelGroup(rank=1, world_size=2, local_rank=1).device_of("cuda:2,cuda:3") == "cuda:3"
    )
