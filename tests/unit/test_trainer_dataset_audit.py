"""The trainer waits for a dataset version's label audit, and never trains a BLOCKED version.

Policies make a split's jobs only once ``DatasetAudited`` arrived (in either order with
``SplitCreated``); a BLOCKED verdict makes FAILED jobs that never start and name the audit's
rule and rows; an explicit CreateTrainingJob on a BLOCKED version is a FAILED_PRECONDITION.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.trainer.adapters import protos
from services.trainer.adapters.repository import TrainerRepository
from services.trainer.domain.jobs import AuditVerdict, DatasetAuditInfo, JobState, policy_job_id
from services.trainer.handlers.admission import LABEL_AUDIT_BLOCKED
from services.trainer.handlers.attempts import runnable_jobs
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.policies import set_training_policy
from services.trainer.handlers.policy_jobs import on_dataset_audited, on_split_created
from shared.errors import FailedPrecondition
from tests.unit import test_trainer_handlers as base
from tests.unit.test_trainer_handlers import (
    SPLIT,
    command,
    create,
    known_split,
    policy,
    split_info,
    staged,
)
from tuneline.dataset.v1 import events_pb2 as dataset_events_pb2
from tuneline.dataset.v1 import resources_pb2 as dataset_pb2
from tuneline.trainer.v1 import events_pb2, resources_pb2

# the handler tests' fixtures: a trainer database (SQLite and PostgreSQL) and the handlers' deps
sessions = base.sessions
deps = base.deps

VERSION = SPLIT.split("/splits/")[0]
JOB = "trainingJobs/" + policy_job_id("trainingPolicies/reviews", SPLIT)
REASON = (
    "label_audit: estimated label noise 31.0% is above the 25% allowed (policy block); "
    "120 of 400 rows suspected; suspected rows: lines 3, 17, 42 (+117 more)"
)


def blocked_event() -> dataset_events_pb2.DatasetAudited:
    return dataset_events_pb2.DatasetAudited(
        dataset_version=VERSION,
        dataset="datasets/reviews",
        verdict=dataset_pb2.LABEL_AUDIT_VERDICT_BLOCKED,
        reason=REASON,
        noise_rate=0.31,
        suspected_count=120,
        suspected_line_numbers=[3, 17, 42],
        audit=f"{VERSION}/audit",
    )


def audited(sessions, deps, event: dataset_events_pb2.DatasetAudited) -> list[str]:
    with sessions() as session, session.begin():
        return on_dataset_audited(session, deps, protos.dataset_audit_from_event(event))


def split_created(sessions, deps) -> list[str]:
    with sessions() as session, session.begin():
        return on_split_created(session, deps, split_info())


@pytest.fixture
def waiting(deps: TrainerDeps) -> TrainerDeps:
    return replace(deps, wait_for_dataset_audit=True)


def with_policy(sessions, deps) -> None:
    with sessions() as session, session.begin():
        set_training_policy(session, deps, policy())


def test_a_policy_waits_for_the_audit_then_makes_its_job(sessions, waiting) -> None:
    with_policy(sessions, waiting)
    assert split_created(sessions, waiting) == []
    passed = replace_verdict(blocked_event(), dataset_pb2.LABEL_AUDIT_VERDICT_PASSED)
    assert audited(sessions, waiting, passed) == [JOB]
    assert audited(sessions, waiting, passed) == []  # a redelivered event makes nothing
    with sessions() as session:
        (row,) = TrainerRepository(session).list_job_rows(limit=10)
    assert row.state == JobState.QUEUED.value


def test_an_audit_before_its_split_lets_the_split_make_the_job(sessions, waiting) -> None:
    with_policy(sessions, waiting)
    warned = replace_verdict(blocked_event(), dataset_pb2.LABEL_AUDIT_VERDICT_WARNED)
    assert audited(sessions, waiting, warned) == []  # no split yet
    assert split_created(sessions, waiting) == [JOB]


def test_a_blocked_version_is_never_trained_and_the_failure_names_rule_and_rows(
    sessions, waiting
) -> None:
    with_policy(sessions, waiting)
    split_created(sessions, waiting)
    assert audited(sessions, waiting, blocked_event()) == [JOB]
    with sessions() as session:
        (row,) = TrainerRepository(session).list_job_rows(limit=10)
        assert row.state == JobState.FAILED.value
        assert runnable_jobs(session) == []
    (failed,) = staged(sessions, events_pb2.TrainingJobFailed)
    assert failed.failure_reason == resources_pb2.TRAINING_FAILURE_REASON_LABEL_AUDIT_BLOCKED
    assert "label_audit" in failed.failure_message
    assert "lines 3, 17, 42" in failed.failure_message
    assert staged(sessions, events_pb2.TrainingJobStarted) == []


def test_create_training_job_on_a_blocked_version_is_a_failed_precondition(sessions, deps) -> None:
    known_split(sessions)
    audited(sessions, deps, blocked_event())
    with pytest.raises(FailedPrecondition) as refused:
        create(sessions, deps, command())
    (violation,) = refused.value.violations
    assert violation.type == LABEL_AUDIT_BLOCKED
    assert violation.subject == VERSION
    assert "lines 3, 17, 42" in violation.description
    with sessions() as session:
        assert TrainerRepository(session).list_job_rows(limit=10) == []


def test_only_blocked_stops_training(sessions, deps) -> None:
    for verdict in (AuditVerdict.PASSED, AuditVerdict.WARNED, AuditVerdict.SKIPPED):
        assert not DatasetAuditInfo(VERSION, verdict).blocks_training
    assert DatasetAuditInfo(VERSION, AuditVerdict.BLOCKED).blocks_training


def replace_verdict(
    event: dataset_events_pb2.DatasetAudited, verdict: int
) -> dataset_events_pb2.DatasetAudited:
    changed = dataset_events_pb2.DatasetAudited()
    changed.CopyFrom(event)
    changed.verdict = verdict  # type: ignore[assignment]
    return changed
