"""The worker process for real: jobs cross the pipe, failures keep their reason, a worker that
dies fails only its job and the next job gets a fresh one, a stop abandons the running job.

Tests that act on a job *while it runs* give it a named pipe as its split manifest: the worker
blocks opening it until the test opens the writing end, so the test knows the job is in the
worker's hands (and cannot finish) before it kills or stops it. No test races a timer.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import peft
import pytest
import torch
import transformers

from services.evaluator.adapters.scoring import (
    RowSource,
    ScoringFailed,
    ScoringJob,
    SubjectRole,
    SubjectSpec,
)
from services.evaluator.adapters.worker import EvaluationWorker, WorkerStopped
from services.evaluator.domain.evaluation import BaseModelRef, FailureReason, ScoringSettings
from services.evaluator.domain.outcomes import ClassificationOutcomes
from shared.task_types import TaskType
from tests.fixtures.evaluation_inputs import review_rows, store_split
from tests.fixtures.trainer_data import build_tiny_bert


@pytest.fixture(scope="module")
def worker():
    running = EvaluationWorker(poll_seconds=0.05)
    running.start()
    yield running
    running.stop()


def _job(tmp_path: Path, *, adapter: str = "", rows: int = 40) -> ScoringJob:
    build_tiny_bert(tmp_path / "models" / "tiny-bert")
    stored = store_split(tmp_path, "reviews", review_rows(rows), validation_fraction=0.5)
    return ScoringJob(
        evaluation="evaluations/worker-test",
        task_type=TaskType.CLASSIFICATION,
        subjects=(
            SubjectSpec(
                "subject",
                SubjectRole.CANDIDATE if adapter else SubjectRole.BASELINE,
                BaseModelRef(model_name="tiny-bert"),
                adapter,
            ),
        ),
        sets=(
            RowSource(
                set_key="set",
                dataset_path=str(stored.dataset_path),
                dataset_sha256=stored.split_created.dataset_content_sha256,
                manifest_path=str(stored.manifest_path),
                manifest_sha256=stored.split_created.manifest_sha256,
            ),
        ),
        scoring=ScoringSettings(max_generation_examples=0, max_new_tokens=1, max_seq_length=32),
        batch_size=8,
        models_root=str(tmp_path / "models"),
        device="cpu",
    )


def test_the_worker_says_what_it_scores_under_and_refuses_other_conditions(worker, tmp_path):
    conditions = worker.conditions("cpu", timeout=300)
    assert conditions.device_type == "cpu"
    assert conditions.dtype == "float32"
    assert conditions.torch_version == torch.__version__
    assert conditions.transformers_version == transformers.__version__
    assert conditions.peft_version == peft.__version__
    job = _job(tmp_path)
    matching = dataclasses.replace(
        job, scoring=dataclasses.replace(job.scoring, conditions=conditions)
    )
    assert worker.run(matching, timeout=300).outcomes
    other = dataclasses.replace(conditions, device_type="cuda", dtype="bfloat16")
    elsewhere = dataclasses.replace(job, scoring=dataclasses.replace(job.scoring, conditions=other))
    with pytest.raises(ScoringFailed, match="expects to be scored under"):
        worker.run(elsewhere, timeout=300)


def test_a_job_is_scored_in_the_worker_process(worker, tmp_path):
    result = worker.run(_job(tmp_path), timeout=300)
    outcomes = result.outcomes[("subject", "set")]
    assert isinstance(outcomes, ClassificationOutcomes)
    assert len(outcomes) > 0
    assert result.device == "cpu"
    assert worker.pid is not None
    assert worker.pid != os.getpid()


def test_an_engine_failure_keeps_its_reason_across_the_pipe(worker, tmp_path):
    with pytest.raises(ScoringFailed) as failure:
        worker.run(_job(tmp_path, adapter=str(tmp_path / "missing")), timeout=300)
    assert failure.value.reason is FailureReason.CHECKPOINT_UNAVAILABLE
    assert "adapter" in failure.value.message


def _job_held_on_its_input(tmp_path: Path) -> tuple[ScoringJob, Path]:
    """A job whose split manifest is a named pipe that nobody writes: it runs until killed."""
    job = _job(tmp_path)
    pipe = tmp_path / "held-manifest.json"
    os.mkfifo(pipe)
    held_sets = tuple(dataclasses.replace(s, manifest_path=str(pipe)) for s in job.sets)
    return dataclasses.replace(job, sets=held_sets), pipe


def _when_the_worker_reads(pipe: Path, then: Callable[[], None]) -> threading.Thread:
    """Run ``then`` once the worker has opened ``pipe`` (opening the writing end blocks until a
    reader opens the other one), then let the worker's read end with EOF."""

    def act() -> None:
        writer = os.open(pipe, os.O_WRONLY)
        try:
            then()
        finally:
            os.close(writer)

    thread = threading.Thread(target=act)
    thread.start()
    return thread


def test_a_killed_worker_fails_its_job_and_the_next_job_gets_a_new_one(worker, tmp_path):
    job, pipe = _job_held_on_its_input(tmp_path)
    first_pid = worker.pid
    assert first_pid is not None
    killer = _when_the_worker_reads(pipe, lambda: os.kill(first_pid, signal.SIGKILL))
    with pytest.raises(ScoringFailed) as failure:
        worker.run(job, timeout=300)
    killer.join()
    # SIGKILL is what the kernel's OOM killer sends
    assert failure.value.reason is FailureReason.OUT_OF_MEMORY
    assert "-9" in failure.value.message
    result = worker.run(_job(tmp_path / "again"), timeout=300)
    assert result.outcomes
    assert worker.pid not in (None, first_pid)


def test_a_job_past_its_timeout_is_killed(tmp_path):
    slow = EvaluationWorker(poll_seconds=0.05)
    job, _ = _job_held_on_its_input(tmp_path)  # never written: it cannot finish in time
    try:
        with pytest.raises(ScoringFailed) as failure:
            slow.run(job, timeout=0.5)
        assert failure.value.reason is FailureReason.INTERNAL
        assert "limit" in failure.value.message
        assert slow.pid is None
    finally:
        slow.stop()


def test_stopping_abandons_the_running_job(tmp_path):
    stopping = EvaluationWorker(poll_seconds=0.05)
    job, pipe = _job_held_on_its_input(tmp_path)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            stopping.run(job, timeout=300)
        except BaseException as error:  # noqa: BLE001 - recorded for the assertion
            outcome.append(error)

    runner = threading.Thread(target=run)
    runner.start()
    stopper = _when_the_worker_reads(pipe, stopping.stop)
    stopper.join(60)
    runner.join(60)
    assert len(outcome) == 1
    assert isinstance(outcome[0], WorkerStopped)
