"""The trainer under faults, on a real database: a cancel racing the start of an attempt
(compare-and-set on the job row, interleaved deterministically in both orders, then raced on
real threads a thousand times), and a full disk during a checkpoint (the attempt ends, the job
resumes from its last complete checkpoint later)."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.trainer.adapters import protos
from services.trainer.adapters.repository import TrainerRepository, job_from_row
from services.trainer.adapters.tables import TrainerBase
from services.trainer.domain.jobs import (
    DISK_FULL_MAX_WAIT,
    FailureReason,
    JobState,
    StopReason,
    disk_full_wait,
)
from services.trainer.domain.worker_messages import (
    WorkerDiskFull,
    WorkerFailed,
    WorkerFinished,
    WorkerMessage,
    WorkerPlan,
    encode_message,
)
from services.trainer.handlers.attempts import (
    begin_attempt,
    cancel_without_worker,
    record_disk_full,
    runnable_jobs,
)
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.jobs import cancel_training_job, create_training_job
from services.trainer.handlers.worker_reports import (
    record_checkpoint,
    record_finished,
    record_started,
)
from shared.artifacts import is_disk_full
from shared.db import create_schema, run_in_transaction
from tests.unit import test_trainer_handlers as base
from tests.unit.test_trainer_handlers import checkpoint, command, create, known_split, started
from tuneline.devtools.waiting import eventually

# the handler tests' fixtures: a trainer database (SQLite and PostgreSQL) and the handlers' deps
sessions = base.sessions
deps = base.deps

JOB = "trainingJobs/j1"


def _row_state(sessions: sessionmaker[Session], name: str = JOB) -> Any:
    with sessions() as session:
        row = TrainerRepository(session).job_row(name)
        assert row is not None
        return row


def _interleave(
    monkeypatch: pytest.MonkeyPatch,
    sessions: sessionmaker[Session],
    first: Callable[[Session], Any],
    second: Callable[[Session], Any],
) -> Any:
    """Run ``first`` in a transaction; right after it reads the job, ``second`` commits in its
    own. ``first`` then writes what it decided on the state it read: the point of the race."""
    read = TrainerRepository.job_row
    sneaked = False

    def job_row_then_the_other(self: TrainerRepository, name: str) -> Any:
        nonlocal sneaked
        row = read(self, name)
        if not sneaked:
            sneaked = True
            run_in_transaction(sessions, second)
        return row

    with monkeypatch.context() as patched:
        patched.setattr(TrainerRepository, "job_row", job_row_then_the_other)
        return run_in_transaction(sessions, first)


def _begin(session: Session) -> Any:
    return begin_attempt(session, JOB, device="cpu", pid=None)


def _cancel(handler_deps: TrainerDeps) -> Callable[[Session], Any]:
    return lambda session: cancel_training_job(session, handler_deps, JOB, "stop")


def test_a_cancel_committed_while_an_attempt_starts_wins_and_no_attempt_begins(
    sessions, deps, monkeypatch
) -> None:
    known_split(sessions)
    create(sessions, deps, command())

    attempt = _interleave(monkeypatch, sessions, _begin, _cancel(deps))

    assert attempt is None, "the supervisor is told not to start a worker"
    row = _row_state(sessions)
    assert (row.state, row.stop_reason) == (JobState.CANCELLED.value, StopReason.CANCELLED.value)
    assert row.attempt_count == 0
    assert row.attempt_started_at is None


def test_an_attempt_started_while_a_cancel_decides_is_flagged_and_ends_cancelled(
    sessions, deps, monkeypatch
) -> None:
    known_split(sessions)
    create(sessions, deps, command())

    answered = _interleave(monkeypatch, sessions, _cancel(deps), _begin)

    assert answered.state is JobState.RUNNING
    assert answered.cancel_requested
    row = _row_state(sessions)
    assert (row.state, row.attempt_count, row.cancel_requested) == ("RUNNING", 1, True)
    # the supervisor sends the worker `cancel` (it reads cancel_requested); the worker stops
    stopped = WorkerFinished(
        step=0, epoch=0.0, final_train_loss=0.0, elapsed_seconds=0.0, tokens_seen=0, cancelled=True
    )
    state = run_in_transaction(sessions, lambda s: record_finished(s, deps, JOB, stopped))
    assert state is JobState.CANCELLED
    row = _row_state(sessions)
    assert row.state == JobState.CANCELLED.value
    assert row.attempt_started_at is None, "no attempt is left open"


def test_the_race_ends_the_same_way_every_time(sessions, deps, monkeypatch) -> None:
    """Many jobs, both orders: every one ends CANCELLED or flagged for cancel with its worker
    told to stop; none RUNNING unflagged, none CANCELLED with an attempt open."""
    known_split(sessions)
    for index in range(40):
        job = f"j{index}"
        create(sessions, deps, command(job))
        name = f"trainingJobs/{job}"
        begin = lambda s, n=name: begin_attempt(s, n, device="cpu", pid=None)  # noqa: E731
        cancel = lambda s, n=name: cancel_training_job(s, deps, n, "")  # noqa: E731
        first, second = (begin, cancel) if index % 2 else (cancel, begin)
        _interleave(monkeypatch, sessions, first, second)
        row = _row_state(sessions, name)
        assert row.cancel_requested
        if row.state == JobState.CANCELLED.value:
            assert row.attempt_started_at is None
        else:
            assert row.state == JobState.RUNNING.value
            assert row.attempt_count == 1


#: Races in :func:`test_the_race_on_real_threads_ends_the_same_way_every_time`, per database.
RACES = 1_000


def _race_on_threads(
    sessions: sessionmaker[Session], deps: TrainerDeps, names: list[str]
) -> dict[str, bool]:
    """For each job in ``names``, ``begin_attempt`` and ``cancel_training_job`` on two threads
    released together by a barrier, each in its own transaction (retried on a lost
    compare-and-set, as the supervisor and the gRPC handler do); whether each attempt began.

    Any error on either side (a compare-and-set that kept losing included) fails the test: it
    breaks the barrier so the other side stops too, and is raised here."""
    barrier = threading.Barrier(2, timeout=60)
    began: dict[str, bool] = {}

    def side(work: Callable[[str, Session], Any], record: bool) -> None:
        try:
            for name in names:
                barrier.wait()
                answer = run_in_transaction(sessions, partial(work, name))
                if record:
                    began[name] = answer is not None
        except BaseException:
            barrier.abort()
            raise

    def begin(name: str, session: Session) -> Any:
        return begin_attempt(session, name, device="cpu", pid=None)

    def cancel(name: str, session: Session) -> Any:
        return cancel_training_job(session, deps, name, "race")

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="race") as pool:
        sides = [pool.submit(side, begin, True), pool.submit(side, cancel, False)]
        for done in sides:
            done.result()
    return began


def test_the_race_on_real_threads_ends_the_same_way_every_time(sessions, deps) -> None:
    """The same race with real concurrency, :data:`RACES` times: whichever commits first, the
    job ends CANCELLED with no attempt ever begun, or RUNNING with one attempt and flagged for
    cancel (its worker is told to stop); never RUNNING unflagged, never CANCELLED with an
    attempt open, and every retried compare-and-set succeeds."""
    known_split(sessions)
    with sessions() as session, session.begin():  # one transaction: the race is what takes time
        names = [
            create_training_job(session, deps, command(f"race{index}")).name
            for index in range(RACES)
        ]

    began = _race_on_threads(sessions, deps, names)

    assert set(began) == set(names)
    for name in names:
        row = _row_state(sessions, name)
        assert row.cancel_requested, name
        if row.state == JobState.CANCELLED.value:
            assert not began[name], f"{name}: cancelled, yet an attempt began"
            assert (row.attempt_count, row.attempt_started_at) == (0, None), name
        else:
            assert row.state == JobState.RUNNING.value, (name, row.state)
            assert began[name], f"{name}: running without an attempt"
            assert row.attempt_count == 1, name


# -- a full disk -----------------------------------------------------------------------------------


def _running_with_a_checkpoint(sessions, deps) -> None:  # type: ignore[no-untyped-def]
    known_split(sessions)
    create(sessions, deps, command())
    run_in_transaction(sessions, _begin)
    run_in_transaction(sessions, lambda s: record_started(s, deps, JOB, started()))
    run_in_transaction(
        sessions,
        lambda s: record_checkpoint(s, deps, JOB, checkpoint(10, 0.5), keep_best_k=0),
    )


def test_a_full_disk_ends_the_attempt_and_the_job_resumes_from_its_last_checkpoint_later(
    sessions, deps
) -> None:
    _running_with_a_checkpoint(sessions, deps)
    now = datetime.now(UTC)

    state = run_in_transaction(
        sessions,
        lambda s: record_disk_full(
            s, JOB, "disk full: [Errno 28] No space left on device", now=now
        ),
    )

    assert state is None, "not terminal: the job resumes"
    row = _row_state(sessions)
    job = job_from_row(row, deps.pricing)
    assert job.state is JobState.RUNNING
    assert job.status_message.startswith("disk full: [Errno 28] No space left on device")
    assert "trainingJobs/j1/checkpoints/" in job.status_message
    assert job.resume_time == now + disk_full_wait(1)
    assert row.latest_state_uri.endswith("states/step-10"), "it resumes from the last complete one"
    assert row.attempt_started_at is None, "the attempt's device time is closed"
    shown = protos.job_to_proto(job)
    assert shown.status_message == job.status_message
    assert shown.resume_time.ToDatetime().replace(tzinfo=now.tzinfo) == job.resume_time
    with sessions() as session:
        assert runnable_jobs(session, now + timedelta(seconds=5)) == []
        assert runnable_jobs(session, now + disk_full_wait(1)) == [JOB]

    # still full at the next attempt: a longer wait; then space is back and it trains again
    run_in_transaction(sessions, _begin)
    later = now + disk_full_wait(1)
    run_in_transaction(sessions, lambda s: record_disk_full(s, JOB, "disk full", now=later))
    assert _row_state(sessions).blocked_until is not None
    assert job_from_row(_row_state(sessions), deps.pricing).resume_time == later + disk_full_wait(2)
    run_in_transaction(sessions, _begin)
    run_in_transaction(sessions, lambda s: record_started(s, deps, JOB, started(10)))
    resumed = job_from_row(_row_state(sessions), deps.pricing)
    assert (resumed.status_message, resumed.resume_time) == ("", None)
    assert protos.job_to_proto(resumed).HasField("resume_time") is False


def test_the_wait_after_a_full_disk_doubles_up_to_a_cap() -> None:
    waits = [disk_full_wait(n) for n in range(1, 12)]
    assert waits[1] == 2 * waits[0]
    assert waits == sorted(waits)
    assert waits[-1] == DISK_FULL_MAX_WAIT


def test_a_job_cancelled_while_it_waits_out_a_full_disk_is_cancelled_at_once(
    sessions, deps
) -> None:
    _running_with_a_checkpoint(sessions, deps)
    now = datetime.now(UTC)
    run_in_transaction(sessions, lambda s: record_disk_full(s, JOB, "disk full", now=now))
    run_in_transaction(sessions, _cancel(deps))
    with sessions() as session:
        assert runnable_jobs(session, now) == [JOB], "the supervisor settles it now"
    assert run_in_transaction(sessions, lambda s: cancel_without_worker(s, JOB))
    assert _row_state(sessions).state == JobState.CANCELLED.value


@pytest.mark.parametrize(
    ("error", "full"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        # torch.save's zip writer and safetensors keep only the OS's words
        (RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos"), False),
        (RuntimeError("PytorchStreamWriter failed: No space left on device"), True),
        (Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"), True),
        (OSError(errno.EACCES, "Permission denied"), False),
    ],
)
def test_a_full_disk_is_recognised_through_the_libraries_wrappers(
    error: BaseException, full: bool
) -> None:
    assert is_disk_full(error) is full


def test_a_wrapped_full_disk_is_recognised_through_its_cause() -> None:
    wrapped = RuntimeError("checkpoint could not be written")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), WorkerDiskFull),
        (OSError(errno.EACCES, "Permission denied"), WorkerFailed),
    ],
)
def test_a_worker_reports_a_full_disk_as_resumable_and_other_errors_as_failures(
    monkeypatch: pytest.MonkeyPatch, raised: OSError, expected: type
) -> None:
    from services.trainer.adapters import worker  # noqa: PLC0415 - imports the engine (torch)
    from services.trainer.adapters.engine import loop  # noqa: PLC0415

    def training_that_hits(*args: object) -> None:
        raise raised

    monkeypatch.setattr(loop, "run_training", training_that_hits)
    reports: list[WorkerMessage] = []
    plan = WorkerPlan.__new__(WorkerPlan)
    object.__setattr__(plan, "job", JOB)
    worker.train_and_report(plan, reports.append, worker.StopSignals())
    [report] = reports
    assert isinstance(report, expected)
    if isinstance(report, WorkerFailed):
        assert report.reason is FailureReason.INTERNAL
    else:
        assert "No space left on device" in report.message


def _disk_full_workers() -> Any:
    """Scripted workers (no torch) whose every attempt runs out of disk at once."""
    from tests.fixtures.trainer_nodes import ScriptedWorkers  # noqa: PLC0415 - the supervisor

    class DiskFullWorkers(ScriptedWorkers):
        def _work(self, plan: WorkerPlan, messages: Any, control: Any) -> None:
            messages.send(encode_message(WorkerDiskFull(message="disk full: [Errno 28]")))

    return DiskFullWorkers(hold=False)


def test_the_supervisor_counts_a_full_disk_and_leaves_the_job_waiting_to_resume(
    database_url: str, deps
) -> None:
    from tests.fixtures.trainer_nodes import node  # noqa: PLC0415 - real supervisor, no torch

    supervisor = node(database_url, _disk_full_workers())
    sessions = supervisor._deps.sessions
    create_schema(sessions.kw["bind"], [TrainerBase.metadata])
    known_split(sessions)
    create(sessions, deps, command())
    supervisor.start()
    try:
        waiting = eventually(
            lambda: (row := _row_state(sessions)).blocked_until is not None and row,
            timeout=120,
            what="the job to wait out the full disk",
        )
    finally:
        supervisor.stop()
    assert waiting.state == JobState.RUNNING.value
    assert waiting.blocked_reason.startswith("disk full: [Errno 28]")
    assert (waiting.attempt_count, waiting.crash_count) == (1, 0), "not counted as a crash"
    assert supervisor._metrics.disk_full._value.get() == 1
