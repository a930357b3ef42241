"""The evaluator's handlers with a real SQLite database and artifact store, a fake registry and
a fake scorer (no torch): queueing, dedupe, baselines stored and reused, events staged with the
result, waiting for dependencies, failures, and the RPC handlers' answers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.evaluator.adapters import protos
from services.evaluator.adapters.protos import checkpoint_ref_from_event
from services.evaluator.adapters.repository import EvaluatorRepository
from services.evaluator.adapters.scoring import ScoringFailed, ScoringJob, ScoringResult
from services.evaluator.adapters.tables import EvaluatorBase
from services.evaluator.domain.data_checks import (
    Contamination,
    Coverage,
    DataChecks,
    DataCheckStatus,
    Shift,
)
from services.evaluator.domain.evaluation import (
    BaseModelRef,
    CheckpointSelection,
    DependencyUnavailable,
    EvaluationSet,
    EvaluationState,
    FailureReason,
    ModelSpec,
    RegisteredCheckpoint,
    ScoringConditions,
    UnknownToRegistry,
)
from services.evaluator.domain.gate import GatePolicy, Verdict
from services.evaluator.domain.outcomes import ClassificationOutcomes
from services.evaluator.handlers.deps import EvaluatorDeps, ServiceDefaults
from services.evaluator.handlers.evaluations import (
    evaluate_checkpoint,
    get_evaluation,
    list_evaluations,
)
from services.evaluator.handlers.events import on_checkpoint_ready, on_split_created
from services.evaluator.handlers.policies import get_evaluation_policy, set_evaluation_policy
from services.evaluator.handlers.running import claim_next, requeue_interrupted, run_evaluation
from shared.artifacts import LocalArtifactStore
from shared.db import create_database_engine, create_schema, create_session_factory
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shared.events import OutboxEvent
from shared.modeling import AdapterMetadata, load_split_rows, write_adapter_metadata
from shared.running_claims import RunningClaims
from shared.task_types import TaskType
from tests.fixtures.evaluation_inputs import StoredSplit, checkpoint_ready, review_rows, store_split
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2
from tuneline.splitter.v1 import events_pb2 as splitter_events

MODEL = "models/sentiment"
BASE_SHA = "b" * 64


class FakeRegistry:
    """Answers like the registry: a model, the production alias, registered checkpoints."""

    def __init__(self, model: ModelSpec) -> None:
        self.models = {model.name: model}
        self.production_of: dict[str, RegisteredCheckpoint] = {}
        self.checkpoints: dict[str, RegisteredCheckpoint] = {}
        self.down = False
        self.calls = 0

    def _answer(self) -> None:
        self.calls += 1
        if self.down:
            raise DependencyUnavailable(FailureReason.BASELINE_UNAVAILABLE, "registry down")

    def model(self, name: str) -> ModelSpec:
        self._answer()
        if name not in self.models:
            raise UnknownToRegistry("model", name)
        return self.models[name]

    def production(self, model: str) -> RegisteredCheckpoint | None:
        self._answer()
        return self.production_of.get(model)

    def checkpoint(self, name: str) -> RegisteredCheckpoint:
        self._answer()
        if name not in self.checkpoints:
            raise UnknownToRegistry("checkpoint", name)
        return self.checkpoints[name]


class FakeScorer:
    """Scores by a quality per subject: example i is right when its fixed draw is below the
    subject's quality, so a better subject is right wherever a worse one is."""

    def __init__(self) -> None:
        self.quality: dict[str, float] = {}
        self.jobs: list[ScoringJob] = []
        self.failure: ScoringFailed | None = None

    def __call__(self, job: ScoringJob) -> ScoringResult:
        self.jobs.append(job)
        if self.failure:
            raise self.failure
        outcomes = {}
        for source in job.sets:
            rows = getattr(
                load_split_rows(Path(source.manifest_path), Path(source.dataset_path)), source.part
            )
            draws = [
                int(hashlib.sha256(r["id"].encode()).hexdigest()[:8], 16) / 16**8 for r in rows
            ]
            for subject in job.subjects:
                quality = self.quality.get(subject.subject_key, 0.5)
                flip = {"pos": "neg", "neg": "pos"}
                outcomes[(subject.subject_key, source.set_key)] = ClassificationOutcomes(
                    example_ids=tuple(r["id"] for r in rows),
                    slices=tuple("" for _ in rows),
                    true_labels=tuple(r["label"] for r in rows),
                    predicted_labels=tuple(
                        r["label"] if d < quality else flip[r["label"]]
                        for r, d in zip(rows, draws, strict=True)
                    ),
                    losses=np.asarray([0.3 if d < quality else 1.2 for d in draws]),
                )
        return ScoringResult(outcomes=outcomes, device="cpu", seconds=0.1, examples_scored=1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class EvaluatorHarness:
    """The evaluator's handlers wired as the service wires them, with fakes at the edges."""

    tmp: Path
    sessions: sessionmaker[Session]
    deps: EvaluatorDeps
    registry: FakeRegistry
    scorer: FakeScorer
    clock: Clock
    #: The SplitCreated the evaluator has already taken in, and the split it describes.
    split: splitter_events.SplitCreated
    stored: StoredSplit
    model: ModelSpec
    #: One entry per time the handlers told the outbox relay that events were staged.
    staged: list[int]


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> Iterator[EvaluatorHarness]:
    engine = create_database_engine(database_url)
    create_schema(engine, [EvaluatorBase.metadata])
    sessions = create_session_factory(engine)
    artifacts = LocalArtifactStore(tmp_path / "evaluator" / "artifacts", readable_roots=[tmp_path])
    stored = store_split(tmp_path, "reviews", review_rows(400), validation_fraction=0.5)
    split_event = stored.split_created
    model = ModelSpec(
        name=MODEL,
        task_type=TaskType.CLASSIFICATION,
        base_model=BaseModelRef(model_name="tiny-bert", files_sha256=BASE_SHA),
        evaluation_set=EvaluationSet(split_event.dataset_version, split_event.split),
        golden_sets=(),
        gate_policy=GatePolicy.resolve(TaskType.CLASSIFICATION),
    )
    registry = FakeRegistry(model)
    scorer = FakeScorer()
    clock = Clock()
    staged: list[int] = []
    deps = EvaluatorDeps(
        sessions=sessions,
        registry=registry,
        artifacts=artifacts,
        score=scorer,
        source="tuneline/evaluator",
        models_root=tmp_path / "models",
        defaults=ServiceDefaults(checkpoint_selection=CheckpointSelection.ALL),
        dependency_wait_seconds=60,
        clock=clock,
        on_events_staged=lambda: staged.append(1),
        claims=RunningClaims(engine, "evaluations"),
    )
    with sessions.begin() as session:
        on_split_created(session, protos.split_location_from_event(split_event))

    yield EvaluatorHarness(
        tmp=tmp_path,
        sessions=sessions,
        deps=deps,
        registry=registry,
        scorer=scorer,
        clock=clock,
        split=split_event,
        stored=stored,
        model=model,
        staged=staged,
    )
    engine.dispose()


def _checkpoint_event(
    env: EvaluatorHarness,
    job: str,
    *,
    quality: float,
    is_final: bool = True,
    step: int = 10,
    trained_max_length: int | None = None,
):
    """A CheckpointReady for a fake adapter of ``job`` that scores ``quality``."""
    adapter = env.tmp / "adapters" / job
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_config.json").write_text(f'{{"job": "{job}"}}')
    (adapter / "adapter_model.safetensors").write_bytes(job.encode() * 10)
    if trained_max_length is not None:
        write_adapter_metadata(
            adapter,
            AdapterMetadata(
                task_type="classification",
                labels=["neg", "pos"],
                max_seq_length=trained_max_length,
                base_model_files_sha256=BASE_SHA,
                base_model_name="tiny-bert",
            ),
        )
    event = checkpoint_ready(
        env.tmp,
        adapter,
        model=MODEL,
        job=job,
        step=step,
        base_model="tiny-bert",
        base_model_sha256=BASE_SHA,
        split=env.stored,
        is_final=is_final,
    )
    env.scorer.quality[f"checkpoint:{event.sha256}"] = quality
    return event


def _announce(
    env: EvaluatorHarness,
    job: str,
    *,
    quality: float,
    is_final: bool = True,
    step: int = 10,
    trained_max_length: int | None = None,
):
    event = _checkpoint_event(
        env,
        job,
        quality=quality,
        is_final=is_final,
        step=step,
        trained_max_length=trained_max_length,
    )
    with env.sessions.begin() as session:
        queued = on_checkpoint_ready(session, env.deps, protos.ready_checkpoint_from_event(event))
    return event, queued


def _run_all(env: EvaluatorHarness) -> list:
    finished = []
    while (claimed := claim_next(env.deps)) is not None:
        result = run_evaluation(env.deps, claimed)
        if result is None:
            break
        finished.append(result)
    return finished


def _outbox(env: EvaluatorHarness) -> list[OutboxEvent]:
    with env.sessions() as session:
        return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)))


def test_a_checkpoint_announced_twice_is_evaluated_once(env: EvaluatorHarness):
    event, queued = _announce(env, "job-a", quality=0.8)
    assert queued is not None
    assert queued.state is EvaluationState.QUEUED
    with env.sessions.begin() as session:
        again = on_checkpoint_ready(session, env.deps, protos.ready_checkpoint_from_event(event))
    assert again is None
    assert len(_run_all(env)) == 1
    assert len(env.scorer.jobs) == 1


def test_the_checkpoint_selection_decides_what_is_queued(env: EvaluatorHarness):
    with env.sessions.begin() as session:
        set_evaluation_policy(
            session,
            env.deps,
            name=f"{MODEL}/evaluationPolicy",
            checkpoint_selection=CheckpointSelection.FINAL,
            max_generation_examples=0,
            max_new_tokens=0,
            batch_size=0,
        )
    _, intermediate = _announce(env, "job-b", quality=0.8, is_final=False, step=5)
    _, final = _announce(env, "job-c", quality=0.8, is_final=True, step=10)
    assert intermediate is None
    assert final is not None


def _announce_step(
    env: EvaluatorHarness, job: str, step: int, loss: float | None, *, best: str = ""
):
    """Announce one checkpoint of ``job`` with BEST_AT_END in force; ``best`` marks the final
    one (it names the job's best, as the trainer's final CheckpointReady does)."""
    event = _checkpoint_event(env, f"{job}-step{step}", quality=0.8, step=step)
    event.checkpoint = f"trainingJobs/{job}/checkpoints/step-{step}"
    event.training_job = f"trainingJobs/{job}"
    event.is_final = bool(best)
    event.best_checkpoint = f"trainingJobs/{job}/checkpoints/{best}" if best else ""
    if loss is not None:
        event.validation_loss = loss
    deps = replace(env.deps, defaults=ServiceDefaults())  # BEST_AT_END
    with env.sessions.begin() as session:
        return on_checkpoint_ready(session, deps, protos.ready_checkpoint_from_event(event))


def test_best_at_end_is_the_default_and_evaluates_the_job_s_best_checkpoint(env: EvaluatorHarness):
    assert ServiceDefaults().checkpoint_selection is CheckpointSelection.BEST_AT_END
    # announced along the way, nothing is queued: the job has not ended
    assert _announce_step(env, "run", 10, 0.52) is None
    assert _announce_step(env, "run", 20, 0.61) is None
    # the final checkpoint names step 10 as the best: step 10 is what is evaluated
    queued = _announce_step(env, "run", 30, 0.64, best="step-10")
    assert queued is not None
    assert queued.checkpoint.name == "trainingJobs/run/checkpoints/step-10"
    assert queued.selection is CheckpointSelection.BEST_AT_END
    assert queued.selection_reason == (
        "the job's best checkpoint by validation loss: step 10, validation loss 0.52; the final "
        "checkpoint, step 30, validation loss 0.64 (selection BEST_AT_END)"
    )
    # a re-announced final queues nothing more
    assert _announce_step(env, "run", 30, 0.64, best="step-10") is None
    [evaluation] = _run_all(env)
    [completed] = [o for o in _outbox(env) if o.topic.endswith("EvaluationCompleted")]
    message = evaluator_events.EvaluationCompleted.FromString(completed.payload)
    assert message.checkpoint == "trainingJobs/run/checkpoints/step-10"
    assert message.checkpoint_selection == evaluator_pb2.CHECKPOINT_SELECTION_BEST_AT_END
    assert message.selection_reason == evaluation.selection_reason == queued.selection_reason


def test_best_at_end_waits_for_the_best_checkpoint_announced_after_the_final_one(
    env: EvaluatorHarness,
):
    # the two events travel under different record keys: the final may come first
    assert _announce_step(env, "late", 30, 0.70, best="step-20") is None
    assert _announce_step(env, "late", 10, 0.90) is None  # not the best
    queued = _announce_step(env, "late", 20, 0.60)
    assert queued is not None
    assert queued.checkpoint.name == "trainingJobs/late/checkpoints/step-20"


def test_best_at_end_evaluates_the_final_checkpoint_of_a_job_that_never_validated(
    env: EvaluatorHarness,
):
    queued = _announce_step(env, "unvalidated", 30, None, best="step-30")
    assert queued is not None
    assert queued.checkpoint.name == "trainingJobs/unvalidated/checkpoints/step-30"
    assert "no validated checkpoint" in queued.selection_reason


def test_a_better_candidate_passes_against_the_base_model_and_events_are_staged(
    env: EvaluatorHarness,
):
    event, _ = _announce(env, "job-good", quality=0.85)
    [evaluation] = _run_all(env)

    assert evaluation.verdict is Verdict.PASSED
    assert evaluation.baseline.kind.value == "BASE_MODEL"
    assert evaluation.baseline.reused is False
    [job] = env.scorer.jobs
    assert [s.subject_key for s in job.subjects] == [
        f"checkpoint:{event.sha256}",
        f"base:{BASE_SHA}",
    ]
    [completed] = [o for o in _outbox(env) if o.topic.endswith("EvaluationCompleted")]
    message = evaluator_events.EvaluationCompleted.FromString(completed.payload)
    assert message.evaluation == evaluation.name
    assert message.checkpoint == event.checkpoint
    assert message.checkpoint_sha256 == event.sha256
    assert message.verdict == 1  # PASSED
    accuracy = next(c for c in message.comparisons if c.metric == "accuracy" and not c.slice)
    assert accuracy.delta > 0.2
    assert accuracy.delta_ci_lower > 0
    assert message.baseline.kind == 2  # BASE_MODEL
    assert message.lineage.split == env.split.split
    assert completed.subject == evaluation.name
    assert env.staged, "the relay was woken after the commit"


def test_the_second_evaluation_reuses_the_stored_baseline(env: EvaluatorHarness):
    _announce(env, "job-1", quality=0.8)
    _announce(env, "job-2", quality=0.82)
    first, second = _run_all(env)
    assert first.baseline.reused is False
    assert second.baseline.reused is True
    assert [len(job.subjects) for job in env.scorer.jobs] == [2, 1], "no second base scoring"
    assert first.baseline.metrics == second.baseline.metrics


def _conditions(device_type: str, dtype: str, torch_version: str = "2.13.0"):
    return ScoringConditions(device_type, dtype, torch_version, "5.24.0", "0.21.0")


def test_a_baseline_stored_under_other_conditions_is_scored_again_not_paired(env: EvaluatorHarness):
    env.deps.conditions = lambda: _conditions("cpu", "float32")
    _announce(env, "job-cpu", quality=0.8)
    [on_cpu] = _run_all(env)
    env.deps.conditions = lambda: _conditions("cuda", "bfloat16")
    _announce(env, "job-gpu", quality=0.81)
    [on_gpu] = _run_all(env)
    env.deps.conditions = lambda: _conditions("cuda", "bfloat16", torch_version="2.14.0")
    _announce(env, "job-new-torch", quality=0.82)
    [new_torch] = _run_all(env)
    env.deps.conditions = lambda: _conditions("cuda", "bfloat16")
    _announce(env, "job-gpu-again", quality=0.83)
    [gpu_again] = _run_all(env)

    assert [e.baseline.reused for e in (on_cpu, on_gpu, new_torch, gpu_again)] == [
        False,
        False,
        False,
        True,
    ]
    assert [len(job.subjects) for job in env.scorer.jobs] == [2, 2, 2, 1]
    assert [job.scoring.conditions.device_type for job in env.scorer.jobs] == [
        "cpu",
        "cuda",
        "cuda",
        "cuda",
    ]


def test_candidate_and_baseline_are_scored_with_the_adapter_s_training_length(
    env: EvaluatorHarness,
):
    _announce(env, "job-96", quality=0.8, trained_max_length=96)
    _announce(env, "job-plain", quality=0.8)
    _run_all(env)
    trained, plain = env.scorer.jobs
    assert trained.scoring.max_seq_length == 96
    assert len(trained.subjects) == 2, "the baseline is scored at the same length"
    assert plain.scoring.max_seq_length == env.deps.defaults.max_seq_length
    assert len(plain.subjects) == 2, "a baseline scored at another length is not paired"


def test_a_production_checkpoint_scored_as_a_candidate_is_reused_as_the_baseline(
    env: EvaluatorHarness,
):
    good, _ = _announce(env, "job-prod", quality=0.85)
    [promoted] = _run_all(env)
    env.registry.production_of[MODEL] = RegisteredCheckpoint(
        name=f"{MODEL}/checkpoints/job-prod.step-10",
        sha256=good.sha256,
        artifact_uri=good.artifact_uri,
        base_model=BaseModelRef(model_name="tiny-bert", files_sha256=BASE_SHA),
    )
    bad, _ = _announce(env, "job-flipped", quality=0.55)
    [regressed] = _run_all(env)

    assert regressed.verdict is Verdict.REGRESSED
    assert regressed.baseline.kind.value == "PRODUCTION_CHECKPOINT"
    assert regressed.baseline.checkpoint == f"{MODEL}/checkpoints/job-prod.step-10"
    assert regressed.baseline.reused is True
    assert len(env.scorer.jobs[-1].subjects) == 1, "production was not scored again"
    topics = [o.topic.rsplit(".", 1)[-1] for o in _outbox(env)]
    assert topics == ["EvaluationCompleted", "EvaluationCompleted", "RegressionDetected"]
    detected = evaluator_events.RegressionDetected.FromString(_outbox(env)[-1].payload)
    assert detected.checkpoint == bad.checkpoint
    assert detected.checkpoint_sha256 == bad.sha256
    assert detected.baseline_checkpoint == f"{MODEL}/checkpoints/job-prod.step-10"
    assert detected.delta < 0
    assert detected.delta_ci_upper < 0
    assert detected.p_value < 0.05
    assert detected.baseline > detected.candidate
    assert detected.regressions
    assert all(r.outcome == 2 for r in detected.regressions)
    assert promoted.verdict is Verdict.PASSED


def test_a_registry_that_does_not_answer_is_waited_for_then_fails_the_evaluation(
    env: EvaluatorHarness,
):
    _announce(env, "job-wait", quality=0.8)
    env.registry.down = True
    claimed = claim_next(env.deps)
    assert run_evaluation(env.deps, claimed) is None
    with env.sessions() as session:
        waiting = EvaluatorRepository(session).evaluation(claimed.name)
    assert waiting.state is EvaluationState.QUEUED
    assert claim_next(env.deps) is None, "not retried before its backoff"
    env.clock.now += timedelta(seconds=61)
    failed = run_evaluation(env.deps, claim_next(env.deps))
    assert failed.state is EvaluationState.FAILED
    assert failed.failure_reason is FailureReason.BASELINE_UNAVAILABLE
    [completed] = _outbox(env)
    message = evaluator_events.EvaluationCompleted.FromString(completed.payload)
    assert message.verdict == 4
    assert message.failure_reason == 4


def test_an_evaluation_set_not_announced_yet_waits_and_runs_once_it_is(env: EvaluatorHarness):
    env.registry.models[MODEL] = ModelSpec(
        **{
            **env.model.__dict__,
            "evaluation_set": EvaluationSet(
                "datasets/late/versions/v1", "datasets/late/versions/v1/splits/s1"
            ),
        }
    )
    _announce(env, "job-late", quality=0.8)
    assert run_evaluation(env.deps, claim_next(env.deps)) is None
    late = store_split(env.tmp, "late", review_rows(200, seed=3), validation_fraction=0.5)
    with env.sessions.begin() as session:
        on_split_created(session, protos.split_location_from_event(late.split_created))
    env.clock.now += timedelta(seconds=5)
    [finished] = _run_all(env)
    assert finished.verdict is Verdict.PASSED
    assert finished.primary_set.split == "datasets/late/versions/v1/splits/s1"


def test_a_checkpoint_whose_files_changed_fails_as_unavailable_and_says_so(env: EvaluatorHarness):
    event, _ = _announce(env, "job-tampered", quality=0.8)
    folder = Path(event.artifact_uri.removeprefix("file://"))
    (folder / "adapter_model.safetensors").write_bytes(b"something else")
    [failed] = _run_all(env)
    assert failed.verdict is Verdict.FAILED
    assert failed.failure_reason is FailureReason.CHECKPOINT_UNAVAILABLE
    assert "sha256" in failed.failure_message
    assert env.scorer.jobs == [], "nothing was scored"
    assert [o.topic.rsplit(".", 1)[-1] for o in _outbox(env)] == ["EvaluationCompleted"]


def test_an_engine_failure_is_a_failed_evaluation_with_its_reason(env: EvaluatorHarness):
    _announce(env, "job-oom", quality=0.8)
    env.scorer.failure = ScoringFailed(FailureReason.OUT_OF_MEMORY, "CUDA out of memory")
    [failed] = _run_all(env)
    assert failed.failure_reason is FailureReason.OUT_OF_MEMORY
    assert failed.metrics == ()
    assert failed.end_time is not None


def test_an_unregistered_model_fails_without_scoring(env: EvaluatorHarness):
    adapter = env.tmp / "adapters" / "orphan"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    event = checkpoint_ready(
        env.tmp,
        adapter,
        model="models/nobody",
        job="orphan",
        step=1,
        base_model="tiny-bert",
        base_model_sha256=BASE_SHA,
    )
    with env.sessions.begin() as session:
        on_checkpoint_ready(session, env.deps, protos.ready_checkpoint_from_event(event))
    [failed] = _run_all(env)
    assert failed.failure_reason is FailureReason.DATA_UNAVAILABLE
    assert "not registered" in failed.failure_message


def test_two_replicas_claiming_at_once_take_different_evaluations(env: EvaluatorHarness):
    """PostgreSQL: a queued evaluation another replica's open claim holds is skipped."""
    if env.sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: claims are serialized, not skipped")
    _announce(env, "job-a", quality=0.8)
    _announce(env, "job-b", quality=0.8)
    with env.sessions.begin() as other_replica:
        held = EvaluatorRepository(other_replica).next_queued(env.clock())
        claimed = claim_next(env.deps)
        assert held is not None
        assert claimed is not None
        assert claimed.name != held.name
        assert claim_next(env.deps) is None, "the held one is not taken twice"


def test_interrupted_evaluations_are_queued_again(env: EvaluatorHarness):
    _announce(env, "job-crash", quality=0.8)
    claimed = claim_next(env.deps)
    assert claimed.state is EvaluationState.RUNNING
    env.deps.claims.release(claimed.name)  # the stopped service's claims went with it
    assert requeue_interrupted(env.deps) == 1
    again = claim_next(env.deps)
    assert again.name == claimed.name


def test_a_starting_replica_requeues_only_what_a_stopped_replica_left_running(
    env: EvaluatorHarness,
):
    """PostgreSQL: a RUNNING evaluation whose replica lives (its claim is held) stays put; one
    whose replica is gone (no claim: its session died with it) is queued again."""
    if not env.deps.claims.enabled:
        pytest.skip("SQLite runs one replica: what is RUNNING at start is all its own")
    _announce(env, "job-live", quality=0.8)
    _announce(env, "job-gone", quality=0.8)
    live = claim_next(env.deps)
    gone = claim_next(env.deps)
    assert live is not None
    assert gone is not None
    env.deps.claims.release(gone.name)  # what the server does when a replica's session dies
    assert requeue_interrupted(env.deps) == 1
    again = claim_next(env.deps)
    assert again is not None
    assert again.name == gone.name
    assert claim_next(env.deps) is None, "the live replica's evaluation is not taken"


# -- RPC handlers -----------------------------------------------------------------------------


def test_evaluate_checkpoint_is_idempotent_by_request_id_and_by_checkpoint(env: EvaluatorHarness):
    event, _ = _announce(env, "job-rpc", quality=0.8)
    with env.sessions.begin() as session:
        existing = EvaluatorRepository(session).by_dedupe_key(
            "checkpoint-ready:" + event.checkpoint
        )
        same, created = evaluate_checkpoint(session, env.deps, checkpoint=event.checkpoint)
    assert not created
    assert same.name == existing.name
    with env.sessions.begin() as session:
        forced, created = evaluate_checkpoint(
            session, env.deps, checkpoint=event.checkpoint, force=True, request_id="r-1"
        )
    assert created
    assert forced.name != existing.name
    assert forced.primary_set == EvaluationSet(env.split.dataset_version, env.split.split)
    with env.sessions.begin() as session:
        repeated, created = evaluate_checkpoint(
            session, env.deps, checkpoint=event.checkpoint, force=True, request_id="r-1"
        )
    assert not created
    assert repeated.name == forced.name


def test_evaluate_checkpoint_refuses_what_it_cannot_evaluate(env: EvaluatorHarness):
    event, _ = _announce(env, "job-refuse", quality=0.8)
    with env.sessions.begin() as session, pytest.raises(InvalidArgument) as invalid:
        evaluate_checkpoint(session, env.deps, checkpoint="checkpoints/7")
    assert invalid.value.violations[0].field == "checkpoint"
    with env.sessions.begin() as session, pytest.raises(NotFound):
        evaluate_checkpoint(session, env.deps, checkpoint="trainingJobs/none/checkpoints/step-1")
    with env.sessions.begin() as session, pytest.raises(NotFound) as no_model:
        evaluate_checkpoint(session, env.deps, checkpoint=event.checkpoint, model="models/other")
    assert no_model.value.resource_name == "models/other"
    with env.sessions.begin() as session, pytest.raises(NotFound):
        evaluate_checkpoint(
            session,
            env.deps,
            checkpoint=event.checkpoint,
            baseline_checkpoint=f"{MODEL}/checkpoints/ghost",
            force=True,
        )
    env.registry.models[MODEL] = ModelSpec(
        **{**env.model.__dict__, "task_type": TaskType.CAUSAL_LM}
    )
    with env.sessions.begin() as session, pytest.raises(FailedPrecondition):
        evaluate_checkpoint(session, env.deps, checkpoint=event.checkpoint, force=True)
    env.registry.down = True
    with env.sessions.begin() as session, pytest.raises(Unavailable):
        evaluate_checkpoint(session, env.deps, checkpoint=event.checkpoint, force=True)


def test_an_explicit_baseline_checkpoint_is_used(env: EvaluatorHarness):
    good, _ = _announce(env, "job-x", quality=0.9)
    _run_all(env)
    name = f"{MODEL}/checkpoints/job-x.step-10"
    env.registry.checkpoints[name] = RegisteredCheckpoint(
        name,
        good.sha256,
        good.artifact_uri,
        BaseModelRef(model_name="tiny-bert", files_sha256=BASE_SHA),
    )
    worse, _ = _announce(env, "job-y", quality=0.88)
    with env.sessions.begin() as session:
        session.execute(  # only the explicit request should run
            EvaluatorBase.metadata.tables["evaluator_evaluations"]
            .delete()
            .where(
                EvaluatorBase.metadata.tables["evaluator_evaluations"].c.checkpoint
                == worse.checkpoint
            )
        )
        evaluate_checkpoint(
            session,
            env.deps,
            checkpoint=worse.checkpoint,
            baseline_checkpoint=name,
        )
    [evaluation] = _run_all(env)
    assert evaluation.baseline.kind.value == "EXPLICIT_CHECKPOINT"
    assert evaluation.baseline.checkpoint == name
    assert evaluation.baseline.reused is True


def test_list_evaluations_pages_newest_first_and_filters(env: EvaluatorHarness):
    names = []
    for i in range(5):
        env.clock.now += timedelta(seconds=1)
        _, queued = _announce(env, f"job-l{i}", quality=0.8)
        names.append(queued.name)
    with env.sessions() as session:
        first, token = list_evaluations(session, page_size=2)
        second, token2 = list_evaluations(session, page_size=2, page_token=token)
        third, token3 = list_evaluations(session, page_size=2, page_token=token2)
        assert [e.name for e in first + second + third] == names[::-1]
        assert token3 == ""
        with pytest.raises(InvalidArgument):
            list_evaluations(session, page_size=2, page_token=token, model=MODEL)
        only, _ = list_evaluations(session, checkpoint="trainingJobs/job-l3/checkpoints/step-10")
        assert [e.name for e in only] == [names[3]]
        assert list_evaluations(session, verdict=Verdict.PASSED)[0] == []


def test_policies_resolve_defaults_and_refuse_bad_values(env: EvaluatorHarness):
    with env.sessions() as session:
        default = get_evaluation_policy(session, env.deps, "models/fresh/evaluationPolicy")
    assert default.checkpoint_selection is CheckpointSelection.ALL  # this env's service default
    assert (default.max_generation_examples, default.max_new_tokens, default.batch_size) == (
        200,
        64,
        32,
    )
    assert default.update_time is None
    with env.sessions.begin() as session, pytest.raises(InvalidArgument) as bad:
        set_evaluation_policy(
            session,
            env.deps,
            name="models/fresh/evaluationPolicy",
            checkpoint_selection=None,
            max_generation_examples=-1,
            max_new_tokens=0,
            batch_size=-4,
        )
    assert {v.field for v in bad.value.violations} == {
        "evaluation_policy.max_generation_examples",
        "evaluation_policy.batch_size",
    }
    with env.sessions.begin() as session, pytest.raises(InvalidArgument):
        set_evaluation_policy(
            session,
            env.deps,
            name="models/fresh",
            checkpoint_selection=None,
            max_generation_examples=0,
            max_new_tokens=0,
            batch_size=0,
        )
    with env.sessions.begin() as session:
        stored = set_evaluation_policy(
            session,
            env.deps,
            name="models/fresh/evaluationPolicy",
            checkpoint_selection=None,
            max_generation_examples=10,
            max_new_tokens=0,
            batch_size=8,
        )
    assert stored.checkpoint_selection is CheckpointSelection.ALL
    with env.sessions() as session:
        read = get_evaluation_policy(session, env.deps, "models/fresh/evaluationPolicy")
    assert read == stored


def test_a_policy_set_retried_with_its_request_id_changes_nothing_twice(env: EvaluatorHarness):
    """What a channel retry after a lost response does: the first answer again, no change."""

    def set_policy(name: str, examples: int, request_id: str):
        with env.sessions.begin() as session:
            return set_evaluation_policy(
                session,
                env.deps,
                name=name,
                checkpoint_selection=None,
                max_generation_examples=examples,
                max_new_tokens=0,
                batch_size=8,
                request_id=request_id,
            )

    name = "models/fresh/evaluationPolicy"
    first = set_policy(name, 10, "retry-me")
    env.clock.now += timedelta(minutes=1)
    assert set_policy(name, 10, "retry-me") == first, "not written again (same update_time)"
    set_policy(name, 20, "someone-else")  # a later change by another caller
    env.clock.now += timedelta(minutes=1)
    late_retry = set_policy(name, 10, "retry-me")
    assert late_retry.max_generation_examples == 20, "a late retry does not undo the later change"
    with pytest.raises(InvalidArgument) as reused:
        set_policy("models/other/evaluationPolicy", 10, "retry-me")
    [violation] = reused.value.violations
    assert (violation.field, violation.reason) == ("request_id", "REQUEST_ID_REUSED")
    assert name in violation.description
    with env.sessions() as session:
        untouched = get_evaluation_policy(session, env.deps, "models/other/evaluationPolicy")
    assert untouched.update_time is None, "the refused request changed nothing"
    with pytest.raises(InvalidArgument) as too_long:
        set_policy(name, 10, "x" * 129)
    assert [v.reason for v in too_long.value.violations] == ["TOO_LONG"]


def test_checkpoint_refs_round_trip_through_the_stored_event(env: EvaluatorHarness):
    event, _queued = _announce(env, "job-ref", quality=0.8)
    with env.sessions() as session:
        stored = EvaluatorRepository(session).checkpoint(event.checkpoint)
    assert stored == checkpoint_ref_from_event(event)
    assert stored.base_model.files_sha256 == BASE_SHA


def test_a_contaminated_evaluation_set_withholds_a_pass_and_says_why_in_its_event(
    env: EvaluatorHarness,
):
    """The scorer is asked to compare the primary set with the train part of the candidate's
    lineage split; a contaminated finding turns PASSED into INSUFFICIENT_DATA."""
    contaminated = DataChecks(
        env.split.split,
        Contamination(
            DataCheckStatus.FLAGGED,
            "30 of 200 evaluation rows (15.0%) have a near-duplicate among 200 training rows",
            evaluation_rows=200,
            training_rows=200,
            contaminated_rows=30,
            max_share=0.01,
            similarity_threshold=0.5,
            row_ids=("r-1", "r-2"),
        ),
        Coverage(DataCheckStatus.FLAGGED, "never evaluated: labels 'neg'", (), ()),
        Shift(DataCheckStatus.PASSED, "no shift", auc=0.52, p_value=0.3, permutations=200),
    )
    scorer = env.scorer

    def scoring_with_checks(job: ScoringJob) -> ScoringResult:
        result = scorer(job)
        result.data_checks = contaminated
        return result

    env.deps.score = scoring_with_checks
    _announce(env, "job-leaky", quality=0.85)
    [evaluation] = _run_all(env)

    checks_job = scorer.jobs[-1].data_checks
    assert checks_job is not None
    assert checks_job.training_split == env.split.split
    assert checks_job.training.part == "train"
    assert checks_job.training.manifest_sha256 == env.split.manifest_sha256
    assert evaluation.verdict is Verdict.INSUFFICIENT_DATA
    assert evaluation.data_checks is not None
    assert evaluation.data_checks.verdict_effect.startswith("PASSED withheld")
    completed = evaluator_events.EvaluationCompleted.FromString(_outbox(env)[0].payload)
    assert completed.verdict == common_pb2.EVALUATION_VERDICT_INSUFFICIENT_DATA
    assert completed.data_checks.contamination.status == evaluator_pb2.DATA_CHECK_STATUS_FLAGGED
    assert completed.data_checks.contamination.contaminated_share == pytest.approx(0.15)
    assert list(completed.data_checks.contamination.evaluation_row_ids) == ["r-1", "r-2"]
    assert completed.data_checks.verdict_effect == evaluation.data_checks.verdict_effect
    assert completed.data_checks.shift.effect_size == pytest.approx(0.02)
    with env.sessions() as session:
        stored = get_evaluation(session, evaluation.name)
    assert stored.data_checks == evaluation.data_checks


def test_without_data_checks_from_the_scorer_the_checks_are_skipped_with_a_reason(
    env: EvaluatorHarness,
):
    _announce(env, "job-plain", quality=0.85)
    [evaluation] = _run_all(env)
    assert evaluation.verdict is Verdict.PASSED
    assert evaluation.data_checks is not None
    assert evaluation.data_checks.contamination.status is DataCheckStatus.SKIPPED
    assert "did not run" in evaluation.data_checks.contamination.reason
