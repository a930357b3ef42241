"""The evaluator service over real gRPC on loopback and a real Kafka broker, with the real
registry service beside it and real adapters on the packaged encoder (all-MiniLM-L6-v2).

The dataset service, the splitter and the trainer are played by the test, exactly as they
behave: a canonical JSONL and a split manifest on disk where those services keep them, an
adapter folder where the trainer keeps its checkpoints, and the DatasetVersioned, SplitCreated
and CheckpointReady events published to the broker. What the evaluator says is read back from
the broker as it arrived.

The story: a model gated on accuracy with an AUTOMATIC promotion policy; a checkpoint briefly
trained on Rotten Tomatoes reviews beats the bare encoder → EvaluationCompleted PASSED → the
registry promotes it. A checkpoint trained on the same reviews with 80 % of the labels flipped
is then judged against that production checkpoint (whose outcomes were stored when it was the
candidate, so it is not scored again) → REGRESSED, RegressionDetected, production unchanged.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from typer.testing import CliRunner

from services.evaluator import bootstrap as evaluator_bootstrap
from services.evaluator.settings import EvaluatorSettings
from services.registry import bootstrap as registry_bootstrap
from services.registry.settings import RegistrySettings
from shared.events import Envelope, KafkaEventPublisher, ensure_topics, topic_for
from shared.modeling import default_models_root, folder_sha256
from shared.modeling.packaged import ENCODER, prepare_packaged_models
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.adapters import cached_classification_adapter, flip_labels
from tests.fixtures.evaluation_inputs import StoredSplit, checkpoint_ready, store_split
from tests.fixtures.events import event_applied, header, read_all_sent, start_group_at_end
from tests.fixtures.trainer_data import rotten_tomatoes_rows
from tuneline.cli.main import app as cli
from tuneline.client.errors import InvalidArgumentError, NotFoundError
from tuneline.client.evaluator import EvaluatorClient
from tuneline.client.registry import RegistryClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2 as dataset_events
from tuneline.devtools.kafka import free_port
from tuneline.devtools.waiting import eventually
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2
from tuneline.registry.v1 import resources_pb2 as registry_pb2
from tuneline.splitter.v1 import events_pb2 as splitter_events
from tuneline.trainer.v1 import events_pb2 as trainer_events

pytestmark = pytest.mark.integration

T = TypeVar("T")
COMPLETED = topic_for(evaluator_events.EvaluationCompleted)
REGRESSION = topic_for(evaluator_events.RegressionDetected)
CHECKPOINT_READY = topic_for(trainer_events.CheckpointReady)
SPLIT_CREATED = topic_for(splitter_events.SplitCreated)
DATASET_VERSIONED = topic_for(dataset_events.DatasetVersioned)
LABELS = ["fresh", "rotten"]


@dataclass
class Stack:
    """The registry and the evaluator in-process on one data directory, and their clients."""

    data_dir: Path
    bootstrap: str
    unique: str
    registry_runtime: ServiceRuntime
    evaluator_runtime: ServiceRuntime
    registry: RegistryClient
    evaluator: EvaluatorClient
    publisher: KafkaEventPublisher
    split: StoredSplit
    model: str

    def publish(self, message: Any, source: str) -> Envelope:
        subject = getattr(message, message.DESCRIPTOR.fields[0].name)
        envelope = Envelope.wrap(message, source=source, subject=subject)
        self.publisher.publish(envelope)
        return envelope

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.evaluator_runtime.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=5).read().decode()

    def records(self, topic: str, checkpoint: str, *, expected: int = 1, timeout: float = 240):
        """Every record of ``topic`` about ``checkpoint``, read once ``expected`` arrived and
        the evaluator's outbox sent all it staged (so a duplicate would be there too)."""
        message_type = (
            evaluator_events.EvaluationCompleted
            if topic == COMPLETED
            else evaluator_events.RegressionDetected
        )

        def about(record: Any) -> bool:
            return message_type.FromString(record.value).checkpoint == checkpoint

        return read_all_sent(
            self.bootstrap,
            topic,
            about,
            expected=expected,
            outboxes=[self.evaluator_runtime.context.sessions],
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def models_root() -> Path:
    root = default_models_root()
    prepare_packaged_models(root, names=(ENCODER,))
    return root


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, models_root: Path
) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("stack")
    unique = uuid.uuid4().hex[:10]
    consumed = [CHECKPOINT_READY, SPLIT_CREATED, DATASET_VERSIONED, COMPLETED, REGRESSION]
    ensure_topics(kafka_bootstrap, consumed)
    groups = {"registry": f"test-registry-{unique}", "evaluator": f"test-evaluator-{unique}"}
    for group in groups.values():
        # a fresh group would replay every earlier run's events on a shared broker
        start_group_at_end(kafka_bootstrap, group, consumed)
    common = CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=data_dir)
    # the registry confirms every PASSED verdict with this evaluator before it counts
    evaluator_port = free_port()
    registry_runtime = build_runtime(
        registry_bootstrap.SPEC,
        common,
        RegistrySettings(
            grpc_port=0,
            metrics_port=0,
            consumer_group=groups["registry"],
            evaluator_target=f"127.0.0.1:{evaluator_port}",
        ),
    )
    registry_runtime.start()
    evaluator_runtime = build_runtime(
        evaluator_bootstrap.SPEC,
        common,
        EvaluatorSettings(
            grpc_port=evaluator_port,
            metrics_port=0,
            consumer_group=groups["evaluator"],
            registry_target=f"127.0.0.1:{registry_runtime.grpc_port}",
            models_root=models_root,
            max_seq_length=128,
            poll_seconds=0.2,
            dependency_wait_seconds=60,
        ),
    )
    evaluator_runtime.start()
    publisher = KafkaEventPublisher(kafka_bootstrap, client_id=f"test-evaluator-{unique}")
    rows = rotten_tomatoes_rows(700, seed=7)
    split = store_split(data_dir, f"reviews-{unique}", rows, validation_fraction=0.3, seed=1)
    registry = RegistryClient(f"127.0.0.1:{registry_runtime.grpc_port}", timeout=10)
    model_id = f"sentiment-{unique}"
    registry.create_model(
        model_id,
        registry_pb2.Model(
            task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
            base_model=common_pb2.BaseModel(model_name=ENCODER),
            evaluation_set=common_pb2.EvaluationSet(
                dataset_version=split.dataset_version, split=split.split
            ),
            gate_policy=common_pb2.GatePolicy(
                metrics=[common_pb2.MetricGate(metric="accuracy", tolerance=0.02)]
            ),
            promotion_policy=registry_pb2.PROMOTION_POLICY_AUTOMATIC,
        ),
    )
    built = Stack(
        data_dir=data_dir,
        bootstrap=kafka_bootstrap,
        unique=unique,
        registry_runtime=registry_runtime,
        evaluator_runtime=evaluator_runtime,
        registry=registry,
        evaluator=EvaluatorClient(f"127.0.0.1:{evaluator_runtime.grpc_port}", timeout=10),
        publisher=publisher,
        split=split,
        model=f"models/{model_id}",
    )
    for runtime in (registry_runtime, evaluator_runtime):
        assert runtime.consumer is not None
        assert runtime.consumer.ready.wait(60), "the consumer never got its partitions"
    built.publish(split.dataset_versioned, "tuneline/dataset")
    built.publish(split.split_created, "tuneline/splitter")
    try:
        yield built
    finally:
        built.evaluator.close()
        built.registry.close()
        publisher.close()
        evaluator_runtime.stop()
        registry_runtime.stop()


@pytest.fixture(scope="module")
def trained(stack: Stack, models_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A good adapter and one trained with 80 % of the labels flipped (same rows, steps)."""
    folder = tmp_path_factory.mktemp("adapters")
    train_ids = set(stack.split.train_ids)
    train = [row for row in stack.split.rows if row["id"] in train_ids]
    common = {
        "models_root": models_root,
        "base_model_name": ENCODER,
        "labels": LABELS,
        "steps": 40,
        "learning_rate": 2e-3,
    }
    good = cached_classification_adapter(rows=train, out=folder / "good", **common)
    flipped = cached_classification_adapter(
        rows=flip_labels(train, LABELS, 0.8, seed=3), out=folder / "flipped", **common
    )
    return good, flipped


def _announce(stack: Stack, adapter: Path, job: str, models_root: Path):
    event = checkpoint_ready(
        stack.data_dir,
        adapter,
        model=stack.model,
        job=f"{job}-{stack.unique}",
        step=40,
        base_model=ENCODER,
        base_model_sha256=folder_sha256(models_root / ENCODER),
        split=stack.split,
    )
    stack.publish(event, "tuneline/trainer")
    return event


def test_a_trained_checkpoint_passes_is_promoted_and_a_flipped_one_regresses(
    stack: Stack, trained, models_root: Path
):
    good_adapter, flipped_adapter = trained

    # -- a good checkpoint against the bare base model -------------------------------------
    good = _announce(stack, good_adapter, "good", models_root)
    [record] = stack.records(COMPLETED, good.checkpoint)
    assert header(record, "ce_source") == "tuneline/evaluator"
    assert header(record, "ce_type") == COMPLETED
    completed = evaluator_events.EvaluationCompleted.FromString(record.value)
    assert record.key.decode() == completed.evaluation
    assert completed.verdict == common_pb2.EVALUATION_VERDICT_PASSED, completed.failure_message
    assert completed.model == stack.model
    assert completed.checkpoint_sha256 == good.sha256
    assert completed.evaluation_set.split == stack.split.split
    assert completed.example_count == len(stack.split.validation_ids)
    assert completed.baseline.kind == evaluator_pb2.BASELINE_KIND_BASE_MODEL
    assert not completed.baseline.reused
    assert completed.lineage.checkpoint == good.checkpoint
    # the default selection: the job's best by validation loss, once it ended (here the final)
    assert completed.checkpoint_selection == evaluator_pb2.CHECKPOINT_SELECTION_BEST_AT_END
    # the evaluation set was checked against the checkpoint's training rows (its lineage split)
    checks = completed.data_checks
    assert checks.training_split == stack.split.split
    assert checks.contamination.status == evaluator_pb2.DATA_CHECK_STATUS_PASSED
    assert checks.contamination.training_rows == len(stack.split.train_ids)
    assert checks.coverage.status == evaluator_pb2.DATA_CHECK_STATUS_PASSED
    assert {c.value for c in checks.coverage.labels} == set(LABELS)
    assert checks.shift.status == evaluator_pb2.DATA_CHECK_STATUS_PASSED, checks.shift.reason
    assert not checks.verdict_effect
    assert "selection BEST_AT_END" in completed.selection_reason
    metrics = {(m.metric, m.slice): m.value for m in completed.metrics}
    baseline = {(m.metric, m.slice): m.value for m in completed.baseline.metrics}
    assert {"loss", "accuracy", "macro_f1", "recall/fresh", "recall/rotten"} <= {
        metric for metric, _ in metrics
    }
    # the briefly trained adapter beats the bare encoder, with an interval above zero
    assert metrics[("accuracy", "")] > baseline[("accuracy", "")] + 0.1
    assert metrics[("loss", "")] < baseline[("loss", "")]
    accuracy = next(c for c in completed.comparisons if c.metric == "accuracy" and not c.slice)
    assert accuracy.test == common_pb2.SIGNIFICANCE_TEST_MCNEMAR
    assert accuracy.delta_ci_lower > 0
    assert accuracy.outcome == common_pb2.COMPARISON_OUTCOME_WITHIN_TOLERANCE
    assert accuracy.tolerance == pytest.approx(0.02)
    assert accuracy.reason.startswith("within tolerance")
    assert 0.02 < accuracy.minimum_detectable_effect < 0.3

    # promoted only once the registry confirmed the verdict with this evaluator (GetEvaluation)
    production = eventually(
        lambda: stack.registry.get_production_alias(stack.model).checkpoint or None,
        timeout=120,
        what="the registry to promote the passing checkpoint",
    )
    assert stack.registry.get_production_alias(stack.model).sha256 == good.sha256
    # the parity check ran on the way (no serving profile: lint and fingerprint skipped) and its
    # merged release model is what production announces next to the adapter
    assert completed.parity.verdict == common_pb2.PARITY_VERDICT_PASSED
    assert completed.parity.fp32_max_abs_logit_delta <= 1e-4
    assert completed.parity.merged_sha256
    released = stack.registry.get_production_alias(stack.model)
    assert released.merged_sha256 == completed.parity.merged_sha256
    assert released.merged_artifact_uri == completed.parity.merged_artifact_uri

    # -- a checkpoint trained on flipped labels against production -------------------------
    flipped = _announce(stack, flipped_adapter, "flipped", models_root)
    [regression_record] = stack.records(REGRESSION, flipped.checkpoint)
    detected = evaluator_events.RegressionDetected.FromString(regression_record.value)
    assert detected.model == stack.model
    assert detected.checkpoint_sha256 == flipped.sha256
    assert detected.baseline_kind == evaluator_pb2.BASELINE_KIND_PRODUCTION_CHECKPOINT
    assert detected.baseline_checkpoint == production
    assert detected.metric == "accuracy"
    assert detected.delta < -0.2
    assert detected.delta_ci_lower < detected.delta < detected.delta_ci_upper < 0
    assert detected.p_value < 0.001
    assert detected.confidence_level == pytest.approx(0.90)  # 1 - 2 alpha: one-sided tests
    assert detected.regressions[0].reason.startswith("worse than tolerated")
    assert detected.regressions[0].adjusted_p_value < 0.05
    assert detected.example_count == len(stack.split.validation_ids)
    assert detected.baseline == pytest.approx(metrics[("accuracy", "")])
    [flipped_record] = stack.records(COMPLETED, flipped.checkpoint)
    flipped_completed = evaluator_events.EvaluationCompleted.FromString(flipped_record.value)
    assert flipped_completed.verdict == common_pb2.EVALUATION_VERDICT_REGRESSED
    assert flipped_completed.evaluation == detected.evaluation
    # production's outcomes were stored when it was the candidate: reused, not recomputed
    assert flipped_completed.baseline.reused
    # staged in one transaction, EvaluationCompleted first: the relay sends them in that order
    assert flipped_record.timestamp <= regression_record.timestamp
    # the registry has applied the verdict (it could have moved production by now): it did not
    eventually(
        lambda: list(
            stack.registry.list_checkpoints(
                stack.model, verdict=common_pb2.EVALUATION_VERDICT_REGRESSED
            )
        ),
        timeout=60,
        what="the registry to record the REGRESSED verdict",
    )
    assert stack.registry.get_production_alias(stack.model).checkpoint == production

    # -- the same CheckpointReady again (a new event id): evaluated once ----------------------
    again = stack.publish(flipped, "tuneline/trainer")
    eventually(
        lambda: event_applied(stack.evaluator_runtime.context.sessions, again.id),
        timeout=120,
        what="the evaluator to apply the CheckpointReady sent again",
    )
    assert len(stack.records(REGRESSION, flipped.checkpoint)) == 1
    evaluations = list(stack.evaluator.list_evaluations(checkpoint=flipped.checkpoint))
    assert [e.name for e in evaluations] == [detected.evaluation]

    # -- the API agrees with the events ------------------------------------------------------
    stored = stack.evaluator.get_evaluation(detected.evaluation)
    assert stored.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED
    assert stored.verdict == common_pb2.EVALUATION_VERDICT_REGRESSED
    assert stored.gate_policy.metrics[0].metric == "accuracy"
    assert list(stored.comparisons) == list(flipped_completed.comparisons)
    regressed = list(
        stack.evaluator.list_evaluations(
            model=stack.model, verdict=common_pb2.EVALUATION_VERDICT_REGRESSED
        )
    )
    assert [e.name for e in regressed] == [detected.evaluation]

    # -- and so does the CLI ---------------------------------------------------------------
    env = {"TUNELINE_EVALUATOR_TARGET": f"127.0.0.1:{stack.evaluator_runtime.grpc_port}"}
    listed = CliRunner().invoke(cli, ["evals", "list", "--model", stack.model], env=env)
    assert listed.exit_code == 0, listed.output
    assert "REGRESSED" in listed.output
    assert "PASSED" in listed.output
    as_json = CliRunner().invoke(cli, ["evals", "list", "--model", stack.model, "--json"], env=env)
    listed_json = json.loads(as_json.output)
    assert [e["name"] for e in listed_json] == [detected.evaluation, completed.evaluation]
    assert [e["verdict"] for e in listed_json] == [
        "EVALUATION_VERDICT_REGRESSED",
        "EVALUATION_VERDICT_PASSED",
    ]
    shown = CliRunner().invoke(cli, ["evals", "show", detected.evaluation], env=env)
    assert shown.exit_code == 0, shown.output
    assert "REGRESSED" in shown.output
    assert "production_checkpoint" in shown.output
    assert f"regressed accuracy on primary/all: {detected.baseline:.4f}" in shown.output
    assert f"data checks against {stack.split.split}" in shown.output
    assert "contamination PASSED" in " ".join(shown.output.split())
    missing = CliRunner().invoke(cli, ["evals", "show", "doesnotexist"], env=env)
    assert missing.exit_code == 1
    assert "NOT_FOUND" in missing.output

    scraped = stack.metrics()
    model_id = stack.model.rsplit("/", 1)[-1]
    assert f'tuneline_evaluations_total{{model="{model_id}",verdict="PASSED"}} 1.0' in scraped
    assert f'tuneline_evaluations_total{{model="{model_id}",verdict="REGRESSED"}} 1.0' in scraped
    assert 'tuneline_evaluation_baseline_results_total{source="reused"} 1.0' in scraped
    # other tests on a shared broker may be announcing checkpoints too: only its presence
    assert re.search(r"^tuneline_evaluation_backlog \d", scraped, re.MULTILINE)
    assert f'tuneline_evaluation_score{{checkpoint="good-{stack.unique}/step-40"' in scraped


def test_evaluate_checkpoint_answers_with_precise_statuses(stack: Stack):
    with pytest.raises(InvalidArgumentError) as invalid:
        stack.evaluator.evaluate_checkpoint("checkpoint-7", baseline_checkpoint="nope")
    fields = {v.field for v in invalid.value.violations}
    assert fields == {"checkpoint"}
    with pytest.raises(NotFoundError) as unknown:
        stack.evaluator.evaluate_checkpoint(f"trainingJobs/none-{stack.unique}/checkpoints/step-1")
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(NotFoundError):
        stack.evaluator.get_evaluation("evaluations/doesnotexist")
    with pytest.raises(InvalidArgumentError):
        stack.evaluator.get_evaluation("evaluation-1")
    with pytest.raises(InvalidArgumentError) as policy:
        stack.evaluator.set_evaluation_policy(
            evaluator_pb2.EvaluationPolicy(name=f"{stack.model}/evaluationPolicy", batch_size=-1)
        )
    assert [v.field for v in policy.value.violations] == ["evaluation_policy.batch_size"]
    default = stack.evaluator.get_evaluation_policy(stack.model)
    assert default.checkpoint_selection == evaluator_pb2.CHECKPOINT_SELECTION_BEST_AT_END
    assert not default.HasField("update_time")
