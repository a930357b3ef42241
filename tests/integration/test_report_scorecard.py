"""The scorecard of a model with several versions, built on real services over real gRPC and a
real Kafka broker, every figure checked against the services' own records.

In-process: the dataset service (two versions uploaded: when the data was pushed), the trainer
(three real runs of a tiny BERT on the CPU: loss curves, device-seconds, cost) and the registry
(lineage, verdicts, alias history). The splitter and the evaluator are played by the test as
they behave: a split manifest on disk with SplitCreated, and EvaluationCompleted /
RegressionDetected about the trainer's real checkpoints, published to the broker.

The story: run ``a`` on v1 passes against the base model → production; run ``b`` on v2 passes
against ``a`` → production; run ``c`` on v2 regresses against ``b``; then a golden-set
re-evaluation finds ``b`` regressed → the registry rolls production back to ``a``.
"""

from __future__ import annotations

import json
import statistics
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from typer.testing import CliRunner

from services.dataset import bootstrap as dataset_bootstrap
from services.dataset.settings import DatasetSettings
from services.registry import bootstrap as registry_bootstrap
from services.registry.settings import RegistrySettings
from services.trainer import bootstrap as trainer_bootstrap
from services.trainer.settings import TrainerSettings
from shared.events import Envelope, KafkaEventPublisher, ensure_topics, topic_for
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.events import start_group_at_end
from tests.fixtures.trainer_data import (
    build_tiny_bert,
    canonical_jsonl,
    sentiment_rows,
    write_split,
)
from tuneline.cli.main import app as cli
from tuneline.client import ownership
from tuneline.client.dataset import DatasetClient
from tuneline.client.errors import FailedPreconditionError, InvalidArgumentError
from tuneline.client.registry import RegistryClient
from tuneline.client.trainer import TrainerClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.devtools.waiting import eventually
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2
from tuneline.registry.v1 import resources_pb2 as registry_pb2
from tuneline.report.collector import Sources, collect
from tuneline.report.page import FIGURE_IDS
from tuneline.report.scorecard import Scorecard, build_scorecard, wilson_interval
from tuneline.splitter.v1 import events_pb2 as splitter_events
from tuneline.trainer.v1 import events_pb2 as trainer_events
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2

# the story (three real runs, each waited on) is set up once, inside the first test's time
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

T = TypeVar("T")
RUNBOOK = "https://runbooks.example.com/support-ml/scorecard"
CONSUMED = [
    topic_for(trainer_events.CheckpointReady),
    topic_for(splitter_events.SplitCreated),
    topic_for(evaluator_events.EvaluationCompleted),
    topic_for(evaluator_events.RegressionDetected),
]
_DECIDED = (
    common_pb2.EVALUATION_VERDICT_PASSED,
    common_pb2.EVALUATION_VERDICT_REGRESSED,
    common_pb2.EVALUATION_VERDICT_INSUFFICIENT_DATA,
)


#: Generous: on a shared broker the registry here also works through every other test's events
#: published meanwhile before it reaches ours.
_WAIT_SECONDS = 300


@dataclass
class Stack:
    data_dir: Path
    runtimes: dict[str, ServiceRuntime]
    publisher: KafkaEventPublisher
    registry: RegistryClient
    trainer: TrainerClient
    dataset: DatasetClient
    model: str

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.runtimes[service].grpc_port}"

    def publish(self, message: Any, source: str, subject: str) -> None:
        self.publisher.publish(Envelope.wrap(message, source=source, subject=subject))


@dataclass
class Story:
    """What the test did, by run id: the trained jobs and their registered final checkpoints."""

    versions: dict[str, str]  # dataset version by run
    estimates: dict[str, trainer_pb2.TrainingEstimate]  # asked for just before each run
    jobs: dict[str, trainer_pb2.TrainingJob]
    checkpoints: dict[str, str]  # registry checkpoint by run
    golden_evaluation: str


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("scorecard")
    models_root = tmp_path_factory.mktemp("models")
    build_tiny_bert(models_root / "tiny-bert")
    unique = uuid.uuid4().hex[:8]
    ensure_topics(kafka_bootstrap, CONSUMED)
    common = CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=data_dir)
    runtimes: dict[str, ServiceRuntime] = {}
    try:
        runtimes["dataset"] = build_runtime(
            dataset_bootstrap.SPEC,
            common,
            DatasetSettings(grpc_port=0, metrics_port=0, validation_workers=1),
        )
        registry_group = f"test-scorecard-registry-{unique}"
        start_group_at_end(kafka_bootstrap, registry_group, CONSUMED)
        runtimes["registry"] = build_runtime(
            registry_bootstrap.SPEC,
            common,
            RegistrySettings(
                grpc_port=0, metrics_port=0, webhook_port=0, consumer_group=registry_group
            ),
        )
        for name in ("dataset", "registry"):
            runtimes[name].start()
        trainer_group = f"test-scorecard-trainer-{unique}"
        start_group_at_end(kafka_bootstrap, trainer_group, CONSUMED)
        runtimes["trainer"] = build_runtime(
            trainer_bootstrap.SPEC,
            common,
            TrainerSettings(
                grpc_port=0,
                metrics_port=0,
                models_root=models_root,
                devices="cpu",
                cpu_threads=1,
                consumer_group=trainer_group,
                splitter_target="127.0.0.1:9",  # the test plays the splitter
                splitter_timeout_seconds=1.0,
                registry_target=f"127.0.0.1:{runtimes['registry'].grpc_port}",
                price_per_device_hour=2.5,
            ),
        )
        runtimes["trainer"].start()
        for runtime in runtimes.values():
            if runtime.consumer is not None:
                assert runtime.consumer.ready.wait(60), "a consumer never got its partitions"
        publisher = KafkaEventPublisher(kafka_bootstrap, client_id=f"test-scorecard-{unique}")
        model_id = f"scored-{unique}"
        stack = Stack(
            data_dir=data_dir,
            runtimes=runtimes,
            publisher=publisher,
            registry=RegistryClient(f"127.0.0.1:{runtimes['registry'].grpc_port}", timeout=30),
            trainer=TrainerClient(f"127.0.0.1:{runtimes['trainer'].grpc_port}", timeout=30),
            dataset=DatasetClient(f"127.0.0.1:{runtimes['dataset'].grpc_port}", timeout=60),
            model=f"models/{model_id}",
        )
        stack.registry.create_model(
            model_id,
            registry_pb2.Model(
                task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
                base_model=common_pb2.BaseModel(model_name="tiny-bert"),
                evaluation_set=common_pb2.EvaluationSet(
                    dataset_version="datasets/held-out/versions/v1"
                ),
                gate_policy=common_pb2.GatePolicy(
                    metrics=[common_pb2.MetricGate(metric="accuracy", tolerance=0.02)]
                ),
                promotion_policy=registry_pb2.PROMOTION_POLICY_AUTOMATIC,
                owner=ownership.owner("support-ml", "#support-ml", RUNBOOK),
                # far above what the tiny runs cost: every run is admitted and runs through
                budget=ownership.budget(per_run="100", per_month="1000"),
            ),
        )
        yield stack
        for client in (stack.registry, stack.trainer, stack.dataset):
            client.close()
        publisher.close()
    finally:
        for runtime in reversed(list(runtimes.values())):
            runtime.stop()


# -- playing the splitter and the evaluator ---------------------------------------------------


def _push(stack: Stack, dataset_id: str, rows: list[dict[str, Any]]) -> str:
    """Upload ``rows`` to the dataset service, write the split the splitter would, announce it;
    returns the dataset version."""
    unique_rows = list({row["text"]: row for row in rows}.values())
    upload = [{"text": r["text"], "label": r["label"]} for r in unique_rows]
    version = stack.dataset.upload_dataset_version(
        f"datasets/{dataset_id}", canonical_jsonl(upload)
    ).dataset_version
    written = write_split(
        stack.data_dir / "splitter" / "artifacts" / version.name.replace("/", "_"),
        unique_rows,
        dataset_version=version.name,
    )
    event = splitter_events.SplitCreated(
        split=f"{version.name}/splits/s1",
        dataset=version.name.split("/versions/")[0],
        dataset_version=version.name,
        dataset_content_sha256=written.dataset_sha256,
        task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
        manifest_uri=written.manifest_path.resolve().as_uri(),
        manifest_sha256=written.manifest_sha256,
        dataset_artifact_uri=written.dataset_path.resolve().as_uri(),
        overlap_count=0,
    )
    for part, ids in (
        (common_pb2.SPLIT_PART_TRAIN, written.train_ids),
        (common_pb2.SPLIT_PART_VALIDATION, written.validation_ids),
    ):
        event.parts.add(part=part, row_count=len(ids))
    event.event_time.GetCurrentTime()
    stack.publish(event, "tuneline/splitter", event.split)
    _await_split(stack.trainer, event.split)
    return version.name


def _job(split: str, model: str, learning_rate: float) -> trainer_pb2.TrainingJob:
    return trainer_pb2.TrainingJob(
        target_model=model,
        split=split,
        base_model=common_pb2.BaseModel(model_name="tiny-bert"),
        adapter_spec=common_pb2.AdapterSpec(rank=4),
        hyperparameters=common_pb2.Hyperparameters(
            batch_size=8, learning_rate=learning_rate, max_steps=8, seed=7
        ),
        stopping_rules=trainer_pb2.StoppingRules(eval_every_n_steps=4),
    )


def _await_split(trainer: TrainerClient, split: str) -> None:
    """Until the trainer knows ``split``: a probe whose task type contradicts it is refused with
    TASK_TYPE_MISMATCH once known (FAILED_PRECONDITION before), so it never creates a job."""
    probe = _job(split, "models/probe", 1e-3)
    probe.task_type = common_pb2.TASK_TYPE_CAUSAL_LM

    def known() -> bool:
        try:
            trainer.create_training_job(probe)
        except FailedPreconditionError:
            return False
        except InvalidArgumentError as error:
            reasons = [v.reason for v in error.violations]
        else:
            raise AssertionError("the probe created a job")
        assert reasons == ["TASK_TYPE_MISMATCH"]
        return True

    eventually(known, timeout=_WAIT_SECONDS, what=f"the trainer to know {split}")


def _train(stack: Stack, split: str, learning_rate: float) -> tuple[trainer_pb2.TrainingJob, str]:
    """One real run to the end; returns the job and its final checkpoint's registry name."""
    created = stack.trainer.create_training_job(_job(split, stack.model, learning_rate))

    def finished() -> trainer_pb2.TrainingJob | None:
        job = stack.trainer.get_training_job(created.name)
        return job if job.state == trainer_pb2.TRAINING_JOB_STATE_SUCCEEDED else None

    job = eventually(finished, timeout=_WAIT_SECONDS, what=f"{created.name} to succeed")

    def registered() -> str | None:
        for checkpoint in stack.registry.list_checkpoints(stack.model, training_job=job.name):
            if checkpoint.source_checkpoint == job.latest_checkpoint:
                return checkpoint.name
        return None

    return job, eventually(
        registered, timeout=_WAIT_SECONDS, what=f"{job.latest_checkpoint} in the registry"
    )


def _comparison(
    candidate: float, baseline: float, *, regressed: bool
) -> common_pb2.MetricComparison:
    delta = candidate - baseline
    return common_pb2.MetricComparison(
        metric="accuracy",
        baseline=baseline,
        candidate=candidate,
        delta=delta,
        delta_ci_lower=delta - 0.04,
        delta_ci_upper=delta + 0.04,
        confidence_level=0.9,
        p_value=0.01 if regressed else 0.3,
        test=common_pb2.SIGNIFICANCE_TEST_MCNEMAR,
        example_count=120,
        higher_is_better=True,
        tolerance=0.02,
        outcome=common_pb2.COMPARISON_OUTCOME_REGRESSED
        if regressed
        else common_pb2.COMPARISON_OUTCOME_WITHIN_TOLERANCE,
    )


def _evaluate(
    stack: Stack,
    job: trainer_pb2.TrainingJob,
    *,
    name: str,
    candidate: float,
    baseline: float,
    baseline_checkpoint: str,
    regressed: bool,
) -> evaluator_events.EvaluationCompleted:
    """Publish what the evaluator says about the job's final checkpoint."""
    checkpoint = stack.trainer.get_checkpoint(job.latest_checkpoint)
    verdict = (
        common_pb2.EVALUATION_VERDICT_REGRESSED
        if regressed
        else common_pb2.EVALUATION_VERDICT_PASSED
    )
    event = evaluator_events.EvaluationCompleted(
        evaluation=name,
        model=stack.model,
        checkpoint=checkpoint.name,
        checkpoint_sha256=checkpoint.sha256,
        verdict=verdict,
        evaluation_set=common_pb2.EvaluationSet(dataset_version="datasets/held-out/versions/v1"),
        metrics=[
            common_pb2.MetricValue(metric="accuracy", value=candidate, example_count=120),
            common_pb2.MetricValue(
                metric="accuracy", slice="negation", value=candidate - 0.1, example_count=40
            ),
        ],
        baseline=evaluator_pb2.Baseline(
            kind=evaluator_pb2.BASELINE_KIND_PRODUCTION_CHECKPOINT
            if baseline_checkpoint
            else evaluator_pb2.BASELINE_KIND_BASE_MODEL,
            checkpoint=baseline_checkpoint,
            base_model=common_pb2.BaseModel(model_name="tiny-bert"),
        ),
        comparisons=[_comparison(candidate, baseline, regressed=regressed)],
        example_count=120,
        lineage=checkpoint.lineage,
    )
    event.event_time.GetCurrentTime()
    stack.publish(event, "tuneline/evaluator", name)
    return event


def _attached(stack: Stack, checkpoint: str, evaluation: str) -> bool:
    return any(
        e.evaluation == evaluation for e in stack.registry.get_checkpoint(checkpoint).evaluations
    )


def _latest_decided(record: registry_pb2.Checkpoint) -> registry_pb2.CheckpointEvaluation | None:
    """The checkpoint's newest evaluation with a verdict that judges it. On a shared broker an
    evaluator of another test may evaluate (and fail to evaluate) our checkpoints too: its
    FAILED evaluations are on the record, and judge nothing."""
    decided = [e for e in record.evaluations if e.verdict in _DECIDED]
    return max(decided, key=lambda e: _when(e.complete_time), default=None)


def _production(stack: Stack) -> str:
    return stack.registry.get_production_alias(stack.model).checkpoint


@pytest.fixture(scope="module")
def story(stack: Stack) -> Story:
    unique = uuid.uuid4().hex[:6]
    dataset_id = f"scored-{unique}"
    stack.dataset.create_dataset(dataset_id, "classification")
    v1 = _push(stack, dataset_id, sentiment_rows(96, seed=1))
    v2 = _push(stack, dataset_id, sentiment_rows(128, seed=2))
    versions = {"a": v1, "b": v2, "c": v2}
    jobs: dict[str, trainer_pb2.TrainingJob] = {}
    checkpoints: dict[str, str] = {}
    plan = {  # run: (learning rate, accuracy, baseline accuracy, regressed)
        "a": (5e-3, 0.81, 0.50, False),
        "b": (5e-3, 0.86, 0.81, False),
        "c": (2e-2, 0.70, 0.86, True),
    }
    estimates: dict[str, trainer_pb2.TrainingEstimate] = {}
    for run, (learning_rate, accuracy, baseline, regressed) in plan.items():
        split = f"{versions[run]}/splits/s1"
        planned, estimates[run] = stack.trainer.estimate_training_job(
            _job(split, stack.model, learning_rate)
        )
        assert planned.name == ""
        jobs[run], checkpoints[run] = _train(stack, split, learning_rate)
        before = _production(stack)
        _evaluate(
            stack,
            jobs[run],
            name=f"evaluations/{unique}-{run}",
            candidate=accuracy,
            baseline=baseline,
            baseline_checkpoint=before,
            regressed=regressed,
        )
        if regressed:
            eventually(
                lambda run=run: _attached(stack, checkpoints[run], f"evaluations/{unique}-{run}"),
                timeout=_WAIT_SECONDS,
                what=f"{run}'s verdict",
            )
        else:
            eventually(
                lambda run=run: _production(stack) == checkpoints[run],
                timeout=_WAIT_SECONDS,
                what=f"{run} live",
            )
    # a golden-set re-evaluation of production (b) regresses: EvaluationCompleted and
    # RegressionDetected, as the evaluator publishes them
    golden = f"evaluations/{unique}-b-golden"
    completed = _evaluate(
        stack,
        jobs["b"],
        name=golden,
        candidate=0.74,
        baseline=0.81,
        baseline_checkpoint=checkpoints["a"],
        regressed=True,
    )
    worse = completed.comparisons[0]
    regression = evaluator_events.RegressionDetected(
        evaluation=golden,
        model=stack.model,
        checkpoint=completed.checkpoint,
        checkpoint_sha256=completed.checkpoint_sha256,
        metric="accuracy",
        baseline=worse.baseline,
        candidate=worse.candidate,
        delta=worse.delta,
        delta_ci_lower=worse.delta_ci_lower,
        delta_ci_upper=worse.delta_ci_upper,
        confidence_level=worse.confidence_level,
        p_value=worse.p_value,
        example_count=worse.example_count,
        tolerance=worse.tolerance,
        regressions=[worse],
        baseline_kind=evaluator_pb2.BASELINE_KIND_PRODUCTION_CHECKPOINT,
    )
    regression.event_time.GetCurrentTime()
    stack.publish(regression, "tuneline/evaluator", golden)
    eventually(
        lambda: _production(stack) == checkpoints["a"],
        timeout=_WAIT_SECONDS,
        what="the rollback to a",
    )
    eventually(
        lambda: _attached(stack, checkpoints["b"], golden),
        timeout=_WAIT_SECONDS,
        what="b's golden evaluation",
    )
    return Story(versions, estimates, jobs, checkpoints, golden)


@pytest.fixture(scope="module")
def card(stack: Stack, story: Story) -> Scorecard:
    sources = Sources(registry=stack.registry, trainer=stack.trainer, dataset=stack.dataset)
    history = collect(sources, stack.model)
    now = datetime.now(UTC)
    return build_scorecard(history, start=now - timedelta(days=1), end=now)


# -- the scorecard against the services' own records ------------------------------------------


def _when(stamp: Any) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def test_every_checkpoint_row_matches_the_registry_trainer_and_dataset_records(
    stack: Stack, story: Story, card: Scorecard
):
    assert card.gaps == ()
    registered = list(stack.registry.list_checkpoints(stack.model))
    assert sorted(c.checkpoint for c in card.checkpoints) == sorted(c.name for c in registered)
    moves = list(stack.registry.list_alias_history(f"{stack.model}/aliases/production"))
    rows = {c.checkpoint: c for c in card.checkpoints}
    for run, name in story.checkpoints.items():
        row = rows[name]
        record = stack.registry.get_checkpoint(name)
        job = stack.trainer.get_training_job(story.jobs[run].name)
        # lineage: the dataset version the run trained on
        assert row.dataset_version == story.versions[run] == job.lineage.dataset_version
        # verdict and the gated metric of the latest evaluation, with its interval
        latest = _latest_decided(record)
        assert latest is not None
        assert row.verdict == common_pb2.EvaluationVerdict.Name(latest.verdict).removeprefix(
            "EVALUATION_VERDICT_"
        )
        gated = next(c for c in latest.comparisons if c.metric == "accuracy" and not c.slice)
        assert row.gated is not None
        assert (row.gated.candidate, row.gated.baseline, row.gated.delta) == (
            pytest.approx(gated.candidate),
            pytest.approx(gated.baseline),
            pytest.approx(gated.delta),
        )
        assert (row.gated.delta_lower, row.gated.delta_upper) == (
            pytest.approx(gated.delta_ci_lower),
            pytest.approx(gated.delta_ci_upper),
        )
        assert [(s.slice, s.value) for s in row.slices] == [
            (m.slice, pytest.approx(m.value)) for m in latest.metrics if m.slice
        ]
        # the run's loss curve and the cost up to the checkpoint
        assert [(p.step, p.train_loss) for p in row.loss_curve] == [
            (p.step, pytest.approx(p.train_loss) if p.HasField("train_loss") else None)
            for p in job.loss_trend
        ]
        assert len(row.loss_curve) >= 2
        assert row.training_cost.device_seconds == pytest.approx(record.cost.device_seconds)
        assert row.training_cost.device_seconds > 0
        amount = record.cost.amount.units + record.cost.amount.nanos / 1e9
        assert row.training_cost.amount == pytest.approx(amount)
        # Money holds whole nanos: a tiny run's cost (a few 1e-4 USD) is exact only to 1e-9,
        # which is more than a relative 1e-6 of it
        assert amount == pytest.approx(record.cost.device_seconds / 3600 * 2.5, abs=1e-9)
        # promotion, rollback and the time from the data's push to production
        promoted = [
            m
            for m in moves
            if m.to_checkpoint == name
            and "ROLLBACK" not in registry_pb2.AliasMoveTrigger.Name(m.trigger)
        ]
        if run == "c":
            assert row.promoted_time is None
            assert row.data_to_production_seconds is None
            continue
        assert row.promoted_time == _when(promoted[0].move_time)
        pushed = _when(stack.dataset.get_dataset_version(story.versions[run]).create_time)
        assert row.data_to_production_seconds == pytest.approx(
            (_when(promoted[0].move_time) - pushed).total_seconds()
        )
        assert row.data_to_production_seconds > 0
    rolled_back = [
        m
        for m in moves
        if m.from_checkpoint == story.checkpoints["b"]
        and m.trigger == registry_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_REGRESSION
    ]
    assert rows[story.checkpoints["b"]].rolled_back_time == _when(rolled_back[0].move_time)
    assert rows[story.checkpoints["a"]].rolled_back_time is None
    assert rows[story.checkpoints["b"]].evaluation == story.golden_evaluation


def test_the_window_figures_match_what_the_services_recorded(
    stack: Stack, story: Story, card: Scorecard
):
    # regression rate: each evaluated checkpoint's latest verdict, as the registry holds it
    latest = {
        c.name: decided.verdict
        for c in stack.registry.list_checkpoints(stack.model)
        if (decided := _latest_decided(c)) is not None
    }
    regressed = sum(v == common_pb2.EVALUATION_VERDICT_REGRESSED for v in latest.values())
    assert (card.window.evaluated, card.window.regressed) == (len(latest), regressed) == (3, 2)
    assert card.window.regression_rate == wilson_interval(2, 3)
    # rollbacks and the mean time to rollback, from the alias history
    moves = list(stack.registry.list_alias_history(f"{stack.model}/aliases/production"))
    rollbacks = [
        m for m in moves if m.trigger == registry_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_REGRESSION
    ]
    assert card.window.rollbacks == len(rollbacks) == 1
    assert card.window.mean_time_to_rollback_seconds == pytest.approx(
        (_when(rollbacks[0].move_time) - _when(rollbacks[0].trigger_time)).total_seconds()
    )
    # cost per run, in run order, and its least-squares slope
    jobs = sorted(
        stack.trainer.list_training_jobs(target_model=stack.model),
        key=lambda j: _when(j.start_time),
    )
    amounts = [j.cost.amount.units + j.cost.amount.nanos / 1e9 for j in jobs]
    assert [r.run for r in card.runs] == [j.name for j in jobs]
    assert [r.amount for r in card.runs] == pytest.approx(amounts)
    assert [r.device_seconds for r in card.runs] == pytest.approx(
        [j.cost.device_seconds for j in jobs]
    )
    assert card.window.runs == 3
    assert card.window.cost_per_run is not None
    assert card.window.cost_per_run.slope == pytest.approx(np.polyfit(range(3), amounts, 1)[0])


def test_estimates_before_each_run_price_the_datas_tokens_at_the_measured_throughput(
    stack: Stack, story: Story, card: Scorecard
):
    """The first run is priced at the conservative default; each later one from the earlier
    runs of tiny-bert on this trainer's device type: the newest run's time outside its loop
    plus the work (train tokens and a third of the validation tokens) at their loops' rate.
    Each job keeps its estimate, and the scorecard shows the estimate's error per run."""
    errors: list[float] = []
    for index, run in enumerate(("a", "b", "c")):
        estimate = story.estimates[run]
        actual = stack.trainer.get_training_job(story.jobs[run].name)
        assert estimate.planned_steps == actual.progress.total_steps == 8
        assert estimate.measured_runs == index
        assert estimate.device_type == ("" if index == 0 else actual.cost.device_type)
        # the planned steps draw 64 of the split's rows: the mean row's tokens times 64
        assert estimate.estimated_tokens == pytest.approx(actual.cost.tokens_processed, rel=0.15)
        # validated at steps 4 and 8, as planned: the validation part twice
        assert sum(p.HasField("validation_loss") for p in actual.loss_trend) == 2
        assert estimate.estimated_validation_tokens > 0
        if index:
            earlier = [stack.trainer.get_training_job(story.jobs[r].name) for r in "abc"[:index]]
            # each run's loop time as the trainer recorded it (read back as a Duration: compared
            # to its precision), its work, and its whole device time
            loop_seconds = [j.progress.elapsed.ToTimedelta().total_seconds() for j in earlier]
            work = [
                j.cost.tokens_processed + j.estimate.estimated_validation_tokens / 3
                for j in earlier
            ]
            device = [j.cost.device_seconds for j in earlier]
            # the loops' pooled rate; the newest run's time outside its loop (the first run
            # started cold)
            rate = sum(work) / sum(loop_seconds)
            fixed = device[-1] - loop_seconds[-1]
            assert estimate.tokens_per_device_second == pytest.approx(rate, rel=1e-4)
            assert estimate.overhead_device_seconds == pytest.approx(fixed, abs=1e-3)
        assert estimate.estimated_device_seconds == pytest.approx(
            estimate.overhead_device_seconds
            + (estimate.estimated_tokens + estimate.estimated_validation_tokens / 3)
            / estimate.tokens_per_device_second
        )
        # the job recorded the same estimate when it was created, beside its actual cost
        assert actual.estimate == estimate
        assert actual.budget == stack.registry.get_model(stack.model).budget
        estimated = estimate.estimated_cost.units + estimate.estimated_cost.nanos / 1e9
        spent = actual.cost.amount.units + actual.cost.amount.nanos / 1e9
        (row,) = [r for r in card.runs if r.run == actual.name]
        assert row.estimate is not None
        assert row.estimate.amount == pytest.approx(estimated)
        assert row.estimate.tokens == estimate.estimated_tokens
        assert row.estimate_error is not None
        assert row.estimate_error.cost == pytest.approx((estimated - spent) / spent)
        assert row.estimate_error.device_seconds == pytest.approx(
            (estimate.estimated_device_seconds - actual.cost.device_seconds)
            / actual.cost.device_seconds
        )
        errors.append(abs((estimated - spent) / spent))
        print(  # the figures for the record (pytest -s)
            f"{run}: estimated {estimate.estimated_tokens} tokens, "
            f"{estimate.estimated_device_seconds:.2f} device-s, {estimated:.6f} USD; "
            f"actual {actual.cost.tokens_processed} tokens, {actual.cost.device_seconds:.2f} "
            f"device-s, {spent:.6f} USD ({(estimated - spent) / spent:+.0%})"
        )
    assert card.window.mean_absolute_estimate_error == pytest.approx(statistics.fmean(errors))


def test_the_scorecard_names_the_owner_runbook_and_budget(stack: Stack, card: Scorecard):
    model = stack.registry.get_model(stack.model)
    assert (card.owner.team, card.owner.contact, card.owner.runbook_uri) == (
        model.owner.team,
        model.owner.contact,
        RUNBOOK,
    )
    assert (card.budget.per_run, card.budget.per_month, card.budget.currency) == (100, 1000, "USD")


def test_the_cli_prints_the_same_scorecard_as_json_and_writes_the_page(
    stack: Stack, story: Story, card: Scorecard, tmp_path: Path
):
    page = tmp_path / "scorecard.html"
    env = {
        "TUNELINE_REGISTRY_TARGET": stack.target("registry"),
        "TUNELINE_TRAINER_TARGET": stack.target("trainer"),
        "TUNELINE_DATASET_TARGET": stack.target("dataset"),
        "TUNELINE_EVALUATOR_TARGET": "127.0.0.1:9",  # down: the registry's copies stand in
    }
    result = CliRunner().invoke(
        cli, ["report", stack.model, "--json", "--html", str(page)], env=env
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["window"]["regressed"] == 2
    assert payload["window"]["rollbacks"] == 1
    assert [c["checkpoint"] for c in payload["checkpoints"]] == [
        c.checkpoint for c in card.checkpoints
    ]
    assert any(gap.startswith("evaluator:") for gap in payload["gaps"])
    text = page.read_text(encoding="utf-8")
    assert all(f'id="{figure_id}"' in text for figure_id in FIGURE_IDS)

    estimate = story.estimates["c"]
    dry_run = CliRunner().invoke(
        cli,
        [
            *("jobs", "create", f"{story.versions['c']}/splits/s1"),
            *("--target-model", stack.model, "--base-model", "tiny-bert", "--rank", "4"),
            *("--batch-size", "8", "--lr", "0.02", "--max-steps", "8", "--seed", "7"),
            "--dry-run",
        ],
        env=env,
    )
    assert dry_run.exit_code == 0, dry_run.output
    assert "nothing was created" in dry_run.stdout
    assert f"{estimate.estimated_tokens}" in dry_run.stdout
    assert "measured on 3 earlier run(s) on cpu" in dry_run.stdout
    jobs = list(stack.trainer.list_training_jobs(target_model=stack.model))
    assert len(jobs) == 3

    tables = CliRunner().invoke(cli, ["report", stack.model.removeprefix("models/")], env=env)
    assert tables.exit_code == 0, tables.output
    assert "regression rate" in tables.stdout
    assert "0.67 (2/3" in tables.stdout
