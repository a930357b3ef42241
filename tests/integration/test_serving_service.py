"""The serving service across processes: it follows production and closes the feedback loop.

A real registry (gRPC server + Kafka consumer, in this process) and the serving service (its own
process, ``python -m services.serving.entrypoints.main``) on the real broker, with two real
LoRA adapters on the packaged encoder in the trainer's artifact folder. Checkpoints are promoted
the way the pipeline does it (CheckpointReady + a PASSED EvaluationCompleted on Kafka):

* promote A → serving loads A → Predict answers from A;
* promote B while client threads keep calling Predict → the swap fails no request, and
  answers move from A to B;
* roll back → serving goes back to A;
* labelled feedback → counted successes/trials reach the registry's live quality series;
* a release whose artifact does not match its announced sha256 is refused: A keeps serving.

Every wait is for a positive signal (a state, a counter), never a sleep.
"""

from __future__ import annotations

import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.registry.bootstrap import SPEC as REGISTRY_SPEC
from services.registry.settings import RegistrySettings
from shared.events import KafkaEventPublisher, ensure_topics, topic_for
from shared.modeling import default_models_root
from shared.modeling.packaged import prepare_packaged_models
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.adapters import untrained_head_adapter
from tests.fixtures.events import start_group_at_end
from tests.fixtures.observability import ManagedProcess, child_environment, managed, scrape
from tests.fixtures.registry_events import (
    BASE_MODEL,
    checkpoint_ready,
    evaluation_completed,
    model_definition,
    publish,
    registry_checkpoint,
)
from tuneline.client import NotFoundError, TunelineError, UnavailableError
from tuneline.client.registry import RegistryClient
from tuneline.client.serving import ServingClient
from tuneline.devtools.kafka import free_port
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.registry.v1 import events_pb2 as registry_events
from tuneline.trainer.v1 import events_pb2 as trainer_events

pytestmark = pytest.mark.integration

LABELS = ("fresh", "rotten")
REGISTRY_CONSUMES = [
    topic_for(trainer_events.CheckpointReady),
    topic_for(evaluator_events.EvaluationCompleted),
    topic_for(evaluator_events.RegressionDetected),
]
SERVING_CONSUMES = [
    topic_for(registry_events.ModelPromoted),
    topic_for(registry_events.ModelRolledBack),
]
TEXTS = ("a gripping, funny film", "dull and far too long", "the cast is wonderful")


@dataclass
class Loop:
    registry: RegistryClient
    serving: ServingClient
    publisher: KafkaEventPublisher
    process: ManagedProcess
    registry_metrics: str
    model_id: str
    artifacts: Path

    @property
    def model(self) -> str:
        return f"models/{self.model_id}"

    def adapter(self, job: str, seed: int) -> tuple[str, str]:
        """A LoRA adapter (fresh head from ``seed``) in the trainer's artifacts: uri, sha256."""
        folder = self.artifacts / job / "step-100"
        return untrained_head_adapter(folder, base_model_name=BASE_MODEL, labels=LABELS, seed=seed)

    def promote(self, job: str, uri: str, sha256: str) -> str:
        """CheckpointReady + a PASSED evaluation, as the pipeline publishes them."""
        baseline = self.registry.get_production_alias(self.model).checkpoint
        ready = checkpoint_ready(self.model_id, job, 100)
        ready.artifact_uri, ready.sha256 = uri, sha256
        publish(self.publisher, ready)
        evaluation = evaluation_completed(
            self.model_id,
            job,
            100,
            evaluation=f"evaluations/{self.model_id}-{job}",
            baseline_checkpoint=baseline,
        )
        evaluation.checkpoint_sha256 = sha256
        publish(self.publisher, evaluation)
        name = registry_checkpoint(self.model_id, job, 100)
        self.process.wait_until(
            lambda: self.registry.get_production_alias(self.model).checkpoint == name,
            timeout=120,
            what=f"{name} in production",
        )
        return name

    def serves(self, checkpoint: str, revision: int) -> bool:
        try:
            state = self.serving.get_serving_state()
        except TunelineError:
            return False
        return any(
            s.checkpoint == checkpoint and s.alias_revision == revision for s in state.served_models
        )

    def wait_serving(self, checkpoint: str, revision: int) -> None:
        self.process.wait_until(
            lambda: self.serves(checkpoint, revision),
            timeout=180,
            what=f"serving {checkpoint} at revision {revision}",
        )

    def live_trials(self, checkpoint: str) -> float:
        exposition = scrape(self.registry_metrics)
        return sum(
            sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
            if sample.name == "tuneline_model_live_quality_trials"
            and sample.labels.get("model") == self.model_id
            and sample.labels.get("checkpoint") == checkpoint.rsplit("/", 1)[-1]
        )


@dataclass
class PredictLoop:
    """Client threads calling Predict until stopped; every answer and error is kept."""

    serving: ServingClient
    model: str
    checkpoints: list[str] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                answer = self.serving.predict(self.model, TEXTS[n % len(TEXTS)], timeout=60)
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                with self.lock:
                    self.errors.append(error)
                continue
            with self.lock:
                self.checkpoints.append(answer.checkpoint)

    def answered_by(self, checkpoint: str) -> bool:
        with self.lock:
            return checkpoint in self.checkpoints


@pytest.fixture(scope="module")
def loop(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    prepare_packaged_models(default_models_root(), names=(BASE_MODEL,))
    data_dir = tmp_path_factory.mktemp("serving-loop")
    unique = uuid.uuid4().hex[:8]
    ensure_topics(kafka_bootstrap, [*REGISTRY_CONSUMES, *SERVING_CONSUMES])
    registry_settings = RegistrySettings(
        grpc_port=0,
        metrics_port=0,
        webhook_port=0,
        webhook_token="unused-token",
        consumer_group=f"test-serving-registry-{unique}",
        watch_poll_seconds=0.2,
        # serving's own sha256 check is under test (a release tampered after it was announced):
        # the registry's re-hash before the move, which would refuse it first, is tested in
        # tests/unit/test_registry_handlers.py
        verify_artifacts=False,
    )
    start_group_at_end(
        kafka_bootstrap, registry_settings.resolved_consumer_group(), REGISTRY_CONSUMES
    )
    registry_runtime: ServiceRuntime = build_runtime(
        REGISTRY_SPEC,
        CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=data_dir),
        registry_settings,
    )
    registry_runtime.start()
    registry = RegistryClient(f"127.0.0.1:{registry_runtime.grpc_port}", timeout=30)
    model_id = f"serve-{unique}"
    registry.create_model(model_id, model_definition())

    serving_group = f"test-serving-{unique}"
    start_group_at_end(kafka_bootstrap, serving_group, SERVING_CONSUMES)
    grpc_port, metrics_port = free_port(), free_port()
    env = child_environment(
        TUNELINE_KAFKA_BOOTSTRAP=kafka_bootstrap,
        TUNELINE_DATA_DIR=str(data_dir),
        TUNELINE_SERVING_GRPC_PORT=str(grpc_port),
        TUNELINE_SERVING_METRICS_PORT=str(metrics_port),
        TUNELINE_SERVING_REGISTRY_TARGET=f"127.0.0.1:{registry_runtime.grpc_port}",
        TUNELINE_SERVING_MODELS=f'["models/{model_id}"]',
        TUNELINE_SERVING_CONSUMER_GROUP=serving_group,
        TUNELINE_SERVING_DEVICE="cpu",
        TUNELINE_SERVING_REPORT_EVERY_FEEDBACKS="4",
        TUNELINE_SERVING_REPORT_INTERVAL_SECONDS="0.5",
        TUNELINE_SERVING_WATCH_RETRY_SECONDS="0.2",
    )
    publisher = KafkaEventPublisher(kafka_bootstrap, client_id=f"test-serving-{unique}")
    log = data_dir / "serving.log"
    try:
        with managed(
            "serving", [sys.executable, "-m", "services.serving.entrypoints.main"], log, env
        ) as process:
            serving = ServingClient(f"127.0.0.1:{grpc_port}", timeout=30)

            def answers() -> bool:
                try:
                    serving.get_serving_state()
                except TunelineError:
                    return False
                return True

            process.wait_until(answers, timeout=120, what="a serving gRPC API")
            yield Loop(
                registry,
                serving,
                publisher,
                process,
                f"http://127.0.0.1:{registry_runtime.metrics_port}/metrics",
                model_id,
                data_dir / "trainer" / "artifacts",
            )
            serving.close()
    finally:
        publisher.close()
        registry.close()
        registry_runtime.stop()


def test_serving_follows_production_swaps_without_failing_a_request_and_reports_feedback(
    loop: Loop,
) -> None:
    with pytest.raises(UnavailableError) as nothing_yet:
        loop.serving.predict(loop.model, TEXTS[0])
    assert nothing_yet.value.reason == "NO_MODEL_LOADED"
    with pytest.raises(NotFoundError):
        loop.serving.predict("models/not-followed", TEXTS[0])

    # -- promote A: serving loads exactly it ----------------------------------------------
    a_uri, a_sha = loop.adapter("job-a", seed=0)
    a = loop.promote("job-a", a_uri, a_sha)
    loop.wait_serving(a, 1)
    answer = loop.serving.predict(loop.model, TEXTS[0])
    assert answer.checkpoint == a
    assert answer.label in LABELS
    assert sorted(s.label for s in answer.scores) == sorted(LABELS)
    assert abs(sum(s.score for s in answer.scores) - 1.0) < 1e-5

    # -- promote B while clients keep predicting: no request fails ------------------------
    b_uri, b_sha = loop.adapter("job-b", seed=1)
    predicting = PredictLoop(loop.serving, loop.model)
    threads = [threading.Thread(target=predicting.run) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        loop.process.wait_until(
            lambda: predicting.answered_by(a), timeout=60, what="answers from A"
        )
        b = loop.promote("job-b", b_uri, b_sha)
        loop.wait_serving(b, 2)
        loop.process.wait_until(
            lambda: predicting.answered_by(b), timeout=60, what="answers from B"
        )
    finally:
        predicting.stop.set()
        for thread in threads:
            thread.join(60)
    assert predicting.errors == []
    assert set(predicting.checkpoints) == {a, b}

    # -- roll back: serving goes back to A -------------------------------------------------
    loop.registry.rollback_model(loop.model, reason="test: back to A")
    loop.wait_serving(a, 3)
    assert loop.serving.predict(loop.model, TEXTS[1]).checkpoint == a

    # -- feedback: counts reach the registry as successes of trials ------------------------
    answers = [loop.serving.predict(loop.model, text) for text in TEXTS * 2]
    for answer in answers:
        loop.serving.submit_feedback(answer.prediction_id, label=answer.label)
    repeated = loop.serving.submit_feedback(answers[0].prediction_id, label=answers[0].label)
    assert repeated.counted is False
    with pytest.raises(NotFoundError):
        loop.serving.submit_feedback("no-such-prediction", label="fresh")
    loop.process.wait_until(
        lambda: loop.live_trials(a) == len(answers),
        timeout=60,
        what=f"{len(answers)} live quality trials for A in the registry",
    )

    # -- a release whose artifact changed after it was announced is refused ---------------
    c_uri, c_sha = loop.adapter("job-c", seed=2)
    c_folder = loop.artifacts / "job-c" / "step-100"
    shutil.copy(
        loop.artifacts / "job-b" / "step-100" / "adapter_model.safetensors", c_folder
    )  # tampered after the checkpoint was announced with c_sha
    c = loop.promote("job-c", c_uri, c_sha)
    loop.process.wait_until(
        lambda: any(r.checkpoint == c for r in loop.serving.get_serving_state().refused_releases),
        timeout=120,
        what="the tampered release refused",
    )
    [refused] = [r for r in loop.serving.get_serving_state().refused_releases if r.checkpoint == c]
    assert refused.reason == "sha256_mismatch"
    assert loop.serving.predict(loop.model, TEXTS[2]).checkpoint == a  # A keeps serving
