"""The collector's reading of the services' resources: the evaluator's record of an evaluation
is preferred to the registry's copy (it has timings), and a service that cannot answer becomes a
listed gap, not a failed report. Stand-in clients return the services' real proto resources."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tuneline.client.errors import UnavailableError
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import resources_pb2 as dataset_pb2
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2
from tuneline.registry.v1 import resources_pb2 as registry_pb2
from tuneline.report.collector import Sources, collect
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
MODEL = "models/sentiment"
CHECKPOINT = f"{MODEL}/checkpoints/j1.step-8"
VERSION = "datasets/reviews/versions/v1"


def _stamp(minutes: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(T0 + timedelta(minutes=minutes))
    return stamp


def _comparison(candidate: float) -> common_pb2.MetricComparison:
    return common_pb2.MetricComparison(
        metric="accuracy",
        baseline=0.8,
        candidate=candidate,
        delta=candidate - 0.8,
        delta_ci_lower=candidate - 0.83,
        delta_ci_upper=candidate - 0.77,
        confidence_level=0.9,
        example_count=100,
        outcome=common_pb2.COMPARISON_OUTCOME_WITHIN_TOLERANCE,
    )


class _Registry:
    def get_model(self, name: str) -> registry_pb2.Model:
        return registry_pb2.Model(
            name=name,
            task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
            gate_policy=common_pb2.GatePolicy(
                metrics=[
                    common_pb2.MetricGate(metric="macro_f1"),
                    common_pb2.MetricGate(metric="accuracy"),
                ],
                primary_metric="accuracy",
            ),
        )

    def list_checkpoints(self, model: str) -> Iterator[registry_pb2.Checkpoint]:
        yield registry_pb2.Checkpoint(
            name=CHECKPOINT,
            training_job="trainingJobs/j1",
            step=8,
            lineage=common_pb2.Lineage(dataset_version=VERSION),
            cost=common_pb2.Cost(
                device_seconds=36.0,
                amount=common_pb2.Money(currency_code="USD", units=0, nanos=25_000_000),
            ),
            evaluations=[
                registry_pb2.CheckpointEvaluation(
                    evaluation="evaluations/e1",
                    verdict=common_pb2.EVALUATION_VERDICT_PASSED,
                    comparisons=[_comparison(0.81)],  # the registry's copy
                    complete_time=_stamp(20),
                )
            ],
            verdict=common_pb2.EVALUATION_VERDICT_PASSED,
            aliases=["production"],
            create_time=_stamp(10),
        )

    def list_alias_history(self, name: str) -> Iterator[registry_pb2.AliasMove]:
        assert name == f"{MODEL}/aliases/-"
        yield registry_pb2.AliasMove(
            alias=f"{MODEL}/aliases/production",
            revision=1,
            to_checkpoint=CHECKPOINT,
            trigger=registry_pb2.ALIAS_MOVE_TRIGGER_PROMOTION,
            trigger_time=_stamp(20),
            move_time=_stamp(20.5),
        )


class _Evaluator:
    def list_evaluations(self, *, model: str) -> Iterator[evaluator_pb2.Evaluation]:
        yield evaluator_pb2.Evaluation(
            name="evaluations/e1",
            verdict=common_pb2.EVALUATION_VERDICT_PASSED,
            metrics=[
                common_pb2.MetricValue(
                    metric="accuracy", slice="negation", value=0.7, example_count=30
                )
            ],
            comparisons=[_comparison(0.82)],
            start_time=_stamp(15),
            end_time=_stamp(19),
        )


class _Trainer:
    def list_training_jobs(self, *, target_model: str) -> Iterator[trainer_pb2.TrainingJob]:
        job = trainer_pb2.TrainingJob(
            name="trainingJobs/j1",
            state=trainer_pb2.TRAINING_JOB_STATE_SUCCEEDED,
            cost=common_pb2.Cost(
                device_seconds=40.0,
                tokens_processed=5000,
                device_type="cpu",
                amount=common_pb2.Money(currency_code="USD", units=1, nanos=500_000_000),
            ),
            create_time=_stamp(1),
            start_time=_stamp(2),
        )
        job.loss_trend.add(step=4, train_loss=0.9)
        job.loss_trend.add(step=8, train_loss=0.6, validation_loss=0.65)
        yield job


class _Down:
    def __getattr__(self, name: str) -> Any:
        def unavailable(*_args: object, **_kwargs: object) -> None:
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")

        return unavailable


class _Dataset:
    def get_dataset_version(self, name: str) -> dataset_pb2.DatasetVersion:
        return dataset_pb2.DatasetVersion(name=name, create_time=_stamp(0))


def _sources(**clients: Any) -> Sources:
    return cast(Sources, Sources(registry=cast(Any, _Registry()), **clients))


def test_every_service_read_and_the_evaluators_record_preferred():
    history = collect(
        _sources(trainer=_Trainer(), evaluator=_Evaluator(), dataset=_Dataset()), MODEL
    )
    assert history.gaps == ()
    assert history.primary_metric == "accuracy"  # the gate's primary, not its first metric
    (checkpoint,) = history.checkpoints
    assert checkpoint.dataset_version == VERSION
    assert checkpoint.cost.amount == 0.025
    (evaluation,) = checkpoint.evaluations
    assert evaluation.comparisons[0].candidate == 0.82  # the evaluator's, not the copy
    assert evaluation.complete_time == T0 + timedelta(minutes=20)  # when the registry acted
    assert evaluation.end_time is not None
    assert evaluation.start_time is not None
    assert (evaluation.end_time - evaluation.start_time).total_seconds() == 240
    run = history.runs["trainingJobs/j1"]
    assert run.cost.amount == 1.5
    assert run.cost.tokens == 5000
    assert [(p.step, p.train_loss, p.validation_loss) for p in run.loss_curve] == [
        (4, 0.9, None),
        (8, 0.6, 0.65),
    ]
    (move,) = history.moves
    assert move.alias == "production"
    assert move.trigger == "PROMOTION"
    assert history.dataset_push_times == {VERSION: T0}


def test_services_that_cannot_answer_become_gaps_and_the_registry_copy_stands_in():
    history = collect(_sources(trainer=_Down(), evaluator=_Down(), dataset=_Down()), MODEL)
    assert [gap.split(":")[0] for gap in history.gaps] == ["evaluator", "trainer", "dataset"]
    (evaluation,) = history.checkpoints[0].evaluations
    assert evaluation.comparisons[0].candidate == 0.81
    assert evaluation.start_time is None
    assert history.runs == {}
    assert history.dataset_push_times == {}
