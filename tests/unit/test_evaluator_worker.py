"""The worker process for real: jobs cross the pipe, failures keep their reason, a worker that
dies fails only its job and the next job gets a fresh one, a stop abandons the running job."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from services.evaluator.adapters.scoring import (
    RowSource,
    ScoringFailed,
    ScoringJob,
    SubjectRole,
    SubjectSpec,
)
from services.evaluator.adapters.worker import EvaluationWorker, WorkerStopped
from services.evaluator.domain.evaluation import BaseModelRef, FailureReason, ScoringSettings
from services.evaluator.domain.outcomes import ClassificationOutcomes, TaskType
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


def test_a_killed_worker_fails_its_job_and_the_next_job_gets_a_new_one(worker, tmp_path):
    # long enough to be killed while it runs: 4,000 rows once finished within the second the
    # killer waited on an idle machine; 20,000 rows and half a second leave a wide margin
    job = _job(tmp_path, rows=20_000)
    first_pid = worker.pid
    assert first_pid is not None

    def kill_soon() -> None:
        time.sleep(0.5)
        os.kill(first_pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
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
    try:
        with pytest.raises(ScoringFailed) as failure:
            slow.run(_job(tmp_path, rows=4000), timeout=0.5)
        assert failure.value.reason is FailureReason.INTERNAL
        assert "limit" in failure.value.message
        assert slow.pid is None
    finally:
        slow.stop()


def test_stopping_abandons_the_running_job(tmp_path):
    stopping = EvaluationWorker(poll_seconds=0.05)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            stopping.run(_job(tmp_path, rows=4000), timeout=300)
        except BaseException as error:  # noqa: BLE001 - recorded for the assertion
            outcome.append(error)

    runner = threading.Thread(target=run)
    runner.start()
    time.sleep(0.5)
    stopping.stop()
    runner.join(30)
    assert len(outcome) == 1
    assert isinstance(outcome[0], WorkerStopped)
