"""Trainer nodes on one database: each job runs on exactly one node, and a dead node's job
resumes on another. Real supervisors (scripted workers, no torch; see
``tests/fixtures/trainer_nodes.py``) on PostgreSQL; SQLite runs one node, whose start resumes
what its previous run left RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.trainer.adapters.repository import TrainerRepository
from services.trainer.adapters.tables import TrainerBase
from services.trainer.domain.jobs import JobState
from services.trainer.handlers.attempts import begin_attempt
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.jobs import create_training_job
from shared.db import create_database_engine, create_schema, create_session_factory
from tests.fixtures.trainer_nodes import PRICING, AnyModels, ScriptedWorkers, node
from tests.unit.test_trainer_handlers import FakeRegistry, FakeSplitter, command, known_split
from tuneline.devtools.waiting import eventually

#: Generous: a loaded test machine, not the code, decides how long these take.
TIMEOUT = 120.0


def _deps(sessions: sessionmaker[Session]) -> TrainerDeps:
    return TrainerDeps(
        sessions=sessions,
        models=AnyModels(),
        pricing=PRICING,
        source="tuneline/trainer",
        software_versions={},
        splits=FakeSplitter({}),
        target_models=FakeRegistry("models/sentiment"),
    )


def _sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_database_engine(database_url)
    create_schema(engine, [TrainerBase.metadata])
    known_split(create_session_factory(engine))
    yield create_session_factory(engine)
    engine.dispose()


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    yield from _sessions(database_url)


@pytest.fixture
def pg_sessions(postgresql_url: str) -> Iterator[sessionmaker[Session]]:
    yield from _sessions(postgresql_url)


def _queue(sessions: sessionmaker[Session], *ids: str) -> list[str]:
    deps = _deps(sessions)
    names = []
    for job_id in ids:
        with sessions() as session, session.begin():
            names.append(create_training_job(session, deps, command(job_id)).name)
    return names


def _jobs(sessions: sessionmaker[Session], names: list[str]) -> dict[str, tuple[str, int]]:
    """Each job's state and attempt count."""
    with sessions() as session:
        repo = TrainerRepository(session)
        rows = {name: repo.job_row(name) for name in names}
        return {name: (row.state, row.attempt_count) for name, row in rows.items() if row}


def _all_in(sessions: sessionmaker[Session], names: list[str], state: JobState) -> bool:
    return all(s == state.value for s, _ in _jobs(sessions, names).values())


def _python_path() -> list[str]:
    configured = os.environ.get("PYTHONPATH", "")
    return [configured] if configured else []


def _url(sessions: sessionmaker[Session]) -> str:
    return sessions.kw["bind"].url.render_as_string(hide_password=False)


def test_two_nodes_run_each_queued_job_once(pg_sessions) -> None:
    names = _queue(pg_sessions, *(f"j{i}" for i in range(6)))
    workers = [ScriptedWorkers(hold=False), ScriptedWorkers(hold=False)]
    nodes = [node(_url(pg_sessions), w) for w in workers]
    for supervisor in nodes:
        supervisor.start()
    try:
        eventually(
            lambda: _all_in(pg_sessions, names, JobState.SUCCEEDED),
            timeout=TIMEOUT,
            what="every job to succeed",
        )
    finally:
        for supervisor in nodes:
            supervisor.stop()
    started = workers[0].started + workers[1].started
    assert sorted(started) == sorted(names), "each job was started once, on one node"
    assert {attempts for _, attempts in _jobs(pg_sessions, names).values()} == {1}


def test_a_dead_nodes_job_resumes_on_a_live_node_and_only_then(pg_sessions) -> None:
    [held] = _queue(pg_sessions, "held")
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.trainer_nodes", _url(pg_sessions)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *_python_path()])},
    )
    workers = ScriptedWorkers(hold=False)
    live = node(_url(pg_sessions), workers)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"started"
        eventually(
            lambda: _jobs(pg_sessions, [held]) == {held: (JobState.RUNNING.value, 1)},
            timeout=TIMEOUT,
            what="the holding node to run its job",
        )
        others = _queue(pg_sessions, "other-1", "other-2")
        live.start()  # its start-up leaves the live node's RUNNING job alone
        # the live node tries the RUNNING job first in every pass: once it has run the
        # queued ones, it has had its chances at the held one
        eventually(
            lambda: _all_in(pg_sessions, others, JobState.SUCCEEDED),
            timeout=TIMEOUT,
            what="the second node to run the queued jobs",
        )
        assert _jobs(pg_sessions, [held]) == {held: (JobState.RUNNING.value, 1)}
        assert workers.started == others, "a live node's job is not taken"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        # the server drops the dead node's claims once it notices its closed sessions
        eventually(
            lambda: _all_in(pg_sessions, [held], JobState.SUCCEEDED),
            timeout=TIMEOUT,
            what="the dead node's job to resume on the live node",
        )
    finally:
        live.stop()
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert workers.started == [*others, held]
    assert _jobs(pg_sessions, [held]) == {held: (JobState.SUCCEEDED.value, 2)}
    with pg_sessions() as session:
        row = TrainerRepository(session).job_row(held)
        assert row is not None
        assert row.crash_count == 0, "a node that stops is a halt, not a crash of the job"


def test_a_starting_node_resumes_what_its_previous_run_left_running(sessions) -> None:
    """Both engines; on SQLite the one node owns every RUNNING job it finds at start."""
    [left] = _queue(sessions, "left")
    with sessions() as session, session.begin():  # the previous run started it, then died
        assert begin_attempt(session, left, device="cpu", pid=None) is not None
    workers = ScriptedWorkers(hold=False)
    restarted = node(_url(sessions), workers)
    restarted.start()
    try:
        eventually(
            lambda: _all_in(sessions, [left], JobState.SUCCEEDED),
            timeout=TIMEOUT,
            what="the interrupted job to resume",
        )
    finally:
        restarted.stop()
    assert workers.started == [left]
    assert _jobs(sessions, [left]) == {left: (JobState.SUCCEEDED.value, 2)}
