"""The alert-driven rollback end to end, with the real binaries.

The registry runs as its own process on a real broker; Debian's ``/usr/bin/prometheus`` loads
the project's rule files (``for:`` shortened, 1 s scrape and evaluation intervals) and scrapes
the registry; ``/usr/bin/prometheus-alertmanager`` runs the project's ``alertmanager.yml``
with its rollback webhook pointed at the registry (bearer token from a file, 1 s group wait).
A model with a floor gets two checkpoints (real LoRA adapters on the packaged encoder) promoted
through real CheckpointReady and EvaluationCompleted events, and the serving service (its own
process) follows production. Traffic goes through it: Predict on the bad checkpoint, then
labelled feedback, which serving counts and reports to the registry's confidence sequence. A
first handful too small to judge changes nothing; once the upper bound is below the floor the
alert must fire (the rule has no ``for:``), make Alertmanager call the webhook, roll production
back to the first checkpoint, put one ModelRolledBack on Kafka, resolve the alert — and serving
must swap back to the first checkpoint.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.events import KafkaEventPublisher, ensure_topics, topic_for
from shared.modeling import default_models_root
from shared.modeling.packaged import prepare_packaged_models
from tests.fixtures.adapters import untrained_head_adapter
from tests.fixtures.events import read_all_sent, service_database, start_group_at_end
from tests.fixtures.observability import (
    ALERTMANAGER_BINARY,
    PROMETHEUS_BINARY,
    alertmanager_argv,
    child_environment,
    http_ok,
    managed,
    prometheus_alerts,
    prometheus_argv,
    prometheus_query,
    scrape,
    write_alertmanager_config,
    write_prometheus_config,
)
from tests.fixtures.registry_events import (
    BASE_MODEL,
    checkpoint_ready,
    evaluation_completed,
    model_definition,
    publish,
    registry_checkpoint,
)
from tuneline.client import TunelineError
from tuneline.client.registry import RegistryClient
from tuneline.client.serving import ServingClient
from tuneline.devtools.kafka import free_port
from tuneline.devtools.waiting import eventually
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.registry.v1 import events_pb2, resources_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events

pytestmark = pytest.mark.integration

ALERT = "TunelineModelLiveQualityBelowFloor"
FLOOR = 0.7
#: The bad checkpoint's live traffic: 11 of every 20 predictions are right (55 %).
BAD_RIGHT, BAD_OF = 11, 20
#: 1 s scrape + 1 s evaluation + 1 s group wait + the webhook's transaction, with room for a
#: loaded CI machine; the production path adds a 15 s scrape and evaluation and a 10 s group
#: wait (the counted rule has no `for:`).
MAX_SECONDS_TO_ROLLBACK = 20.0
CONSUMED = [
    topic_for(trainer_events.CheckpointReady),
    topic_for(evaluator_events.EvaluationCompleted),
    topic_for(evaluator_events.RegressionDetected),
]
ROLLED_BACK = topic_for(events_pb2.ModelRolledBack)
SERVING_CONSUMES = [topic_for(events_pb2.ModelPromoted), ROLLED_BACK]
LABELS = ("fresh", "rotten")
TEXTS = ("a gripping, funny film", "dull and far too long", "the cast is wonderful")

T = TypeVar("T")


def _serving(client: RegistryClient) -> bool:
    try:
        list(client.list_models(page_size=1))
    except Exception:  # noqa: BLE001 - not listening yet
        return False
    return True


def _adapter(artifacts: Path, job: str, seed: int) -> tuple[str, str]:
    """A real LoRA adapter (its head from ``seed``) where the trainer keeps checkpoints."""
    folder = artifacts / job / "step-100"
    return untrained_head_adapter(folder, base_model_name=BASE_MODEL, labels=LABELS, seed=seed)


def _promote_by_events(
    client: RegistryClient,
    publisher: KafkaEventPublisher,
    model_id: str,
    job: str,
    artifact: tuple[str, str],
) -> str:
    """What the trainer and evaluator publish for a good checkpoint; returns its registry name."""
    baseline = client.get_production_alias(f"models/{model_id}").checkpoint
    ready = checkpoint_ready(model_id, job, 100)
    ready.artifact_uri, ready.sha256 = artifact
    publish(publisher, ready)
    evaluation = evaluation_completed(
        model_id,
        job,
        100,
        evaluation=f"evaluations/{model_id}-{job}",
        baseline_checkpoint=baseline,
    )
    evaluation.checkpoint_sha256 = ready.sha256
    publish(publisher, evaluation)
    name = registry_checkpoint(model_id, job, 100)
    eventually(
        lambda: client.get_production_alias(f"models/{model_id}").checkpoint == name,
        timeout=180,
        what=f"{name} in production",
    )
    return name


def _serves(serving: ServingClient, checkpoint: str) -> bool:
    try:
        return any(s.checkpoint == checkpoint for s in serving.get_serving_state().served_models)
    except TunelineError:
        return False


class LiveTraffic:
    """Clients predicting and sending the true label, until stopped: on the bad checkpoint
    ``BAD_RIGHT`` of every ``BAD_OF`` predictions are right, on any other all are."""

    def __init__(self, serving: ServingClient, model: str, bad: str) -> None:
        self.serving, self.model, self.bad = serving, model, bad
        self.answered_by: list[str] = []
        self.first_answer: dict[str, float] = {}
        self.errors: list[Exception] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._count = itertools.count()

    def run(self) -> None:
        while not self.stop.is_set():
            index = next(self._count)
            try:
                answer = self.serving.predict(self.model, TEXTS[index % len(TEXTS)])
                right = answer.checkpoint != self.bad or index % BAD_OF < BAD_RIGHT
                other = next(label for label in LABELS if label != answer.label)
                self.serving.submit_feedback(
                    answer.prediction_id, label=answer.label if right else other
                )
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                with self._lock:
                    self.errors.append(error)
                continue
            with self._lock:
                self.answered_by.append(answer.checkpoint)
                self.first_answer.setdefault(answer.checkpoint, time.monotonic())

    def served(self, checkpoint: str) -> int:
        with self._lock:
            return self.answered_by.count(checkpoint)


def _traffic(serving: ServingClient, model: str, *, right: int, total: int) -> set[str]:
    """``total`` predictions with labelled feedback, ``right`` of them right (the truth is
    the predicted label, else the other one); returns the checkpoints that answered."""

    def one(index: int) -> str:
        answer = serving.predict(model, TEXTS[index % len(TEXTS)])
        other = next(label for label in LABELS if label != answer.label)
        serving.submit_feedback(
            answer.prediction_id, label=answer.label if index < right else other
        )
        return answer.checkpoint

    with ThreadPoolExecutor(max_workers=3) as pool:
        return set(pool.map(one, range(total)))


def _live_trials(registry_metrics_url: str, model_id: str) -> float:
    return _value(
        scrape(registry_metrics_url), "tuneline_model_live_quality_trials", model=model_id
    )


def _firing(prometheus_url: str, model_id: str) -> dict[str, Any] | None:
    for alert in prometheus_alerts(prometheus_url):
        labels = alert["labels"]
        if labels["alertname"] == ALERT and labels.get("model") == model_id:
            return alert if alert["state"] == "firing" else None
    return None


def _samples(exposition: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples called ``name`` in a ``/metrics`` text, by label set."""
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    }


def _value(exposition: str, name: str, **labels: str) -> float:
    return sum(
        value
        for label_set, value in _samples(exposition, name).items()
        if set(labels.items()) <= label_set
    )


def test_live_quality_below_the_floor_rolls_production_back(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for binary in (PROMETHEUS_BINARY, ALERTMANAGER_BINARY):
        if not Path(binary).exists():
            pytest.fail(
                f"{binary} is missing: apt-get install -y prometheus prometheus-alertmanager"
            )

    token_file = tmp_path / "registry-webhook-token"
    token_file.write_text(secrets.token_urlsafe(32) + "\n")
    token_file.chmod(0o600)
    grpc_port, metrics_port, webhook_port = free_port(), free_port(), free_port()
    prometheus_port, alertmanager_port = free_port(), free_port()
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    alertmanager_url = f"http://127.0.0.1:{alertmanager_port}"
    registry_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    group = f"test-alert-rollback-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [*CONSUMED, ROLLED_BACK])
    start_group_at_end(kafka_bootstrap, group, CONSUMED)
    registry_env = child_environment(
        TUNELINE_KAFKA_BOOTSTRAP=kafka_bootstrap,
        TUNELINE_DATA_DIR=str(tmp_path / "data"),
        TUNELINE_REGISTRY_GRPC_PORT=str(grpc_port),
        TUNELINE_REGISTRY_METRICS_PORT=str(metrics_port),
        TUNELINE_REGISTRY_WEBHOOK_HOST="127.0.0.1",
        TUNELINE_REGISTRY_WEBHOOK_PORT=str(webhook_port),
        TUNELINE_REGISTRY_WEBHOOK_TOKEN_FILE=str(token_file),
        TUNELINE_REGISTRY_CONSUMER_GROUP=group,
    )
    alertmanager_config = write_alertmanager_config(
        tmp_path / "alertmanager",
        webhook_url=f"http://127.0.0.1:{webhook_port}/v1/alerts",
        token_file=token_file,
    )
    prometheus_config = write_prometheus_config(
        tmp_path / "prometheus",
        scrape_targets={
            "registry": f"127.0.0.1:{metrics_port}",
            "alertmanager": f"127.0.0.1:{alertmanager_port}",
        },
        alertmanager=f"127.0.0.1:{alertmanager_port}",
    )

    with contextlib.ExitStack() as stack:
        # every process is stopped on the way out, in reverse order, whatever fails
        registry = stack.enter_context(
            managed(
                "registry",
                [sys.executable, "-m", "services.registry.entrypoints.main"],
                tmp_path / "registry.log",
                registry_env,
            )
        )
        alertmanager = stack.enter_context(
            managed(
                "alertmanager",
                alertmanager_argv(alertmanager_config, tmp_path / "am-data", alertmanager_port),
                tmp_path / "alertmanager.log",
            )
        )
        prometheus = stack.enter_context(
            managed(
                "prometheus",
                prometheus_argv(prometheus_config, tmp_path / "tsdb", prometheus_port),
                tmp_path / "prometheus.log",
            )
        )
        alertmanager.wait_until(
            lambda: http_ok(f"{alertmanager_url}/-/ready"), timeout=180, what="/-/ready"
        )
        prometheus.wait_until(
            lambda: http_ok(f"{prometheus_url}/-/ready"), timeout=180, what="/-/ready"
        )
        client = stack.enter_context(RegistryClient(f"127.0.0.1:{grpc_port}", timeout=30))
        registry.wait_until(lambda: _serving(client), timeout=60, what="a serving gRPC API")
        publisher = KafkaEventPublisher(kafka_bootstrap, client_id="test-alert-rollback")
        stack.callback(publisher.close)

        # a model with a floor, the serving service following it, and two checkpoints (real
        # adapters) promoted one after the other
        model_id = f"e2e-{uuid.uuid4().hex[:10]}"
        model = f"models/{model_id}"
        client.create_model(model_id, model_definition(floor=FLOOR))
        prepare_packaged_models(default_models_root(), names=(BASE_MODEL,))
        artifacts = tmp_path / "data" / "trainer" / "artifacts"
        serving_group = f"test-alert-serving-{uuid.uuid4().hex[:8]}"
        ensure_topics(kafka_bootstrap, SERVING_CONSUMES)
        start_group_at_end(kafka_bootstrap, serving_group, SERVING_CONSUMES)
        serving_port = free_port()
        serving_process = stack.enter_context(
            managed(
                "serving",
                [sys.executable, "-m", "services.serving.entrypoints.main"],
                tmp_path / "serving.log",
                child_environment(
                    TUNELINE_KAFKA_BOOTSTRAP=kafka_bootstrap,
                    TUNELINE_DATA_DIR=str(tmp_path / "data"),
                    TUNELINE_SERVING_GRPC_PORT=str(serving_port),
                    TUNELINE_SERVING_METRICS_PORT=str(free_port()),
                    TUNELINE_SERVING_REGISTRY_TARGET=f"127.0.0.1:{grpc_port}",
                    TUNELINE_SERVING_MODELS=f'["{model}"]',
                    TUNELINE_SERVING_CONSUMER_GROUP=serving_group,
                    TUNELINE_SERVING_DEVICE="cpu",
                    # batches by time only, so the test knows what each report holds
                    TUNELINE_SERVING_REPORT_EVERY_FEEDBACKS="100000",
                    TUNELINE_SERVING_REPORT_INTERVAL_SECONDS="0.5",
                ),
            )
        )
        serving = stack.enter_context(ServingClient(f"127.0.0.1:{serving_port}", timeout=60))
        good = _promote_by_events(
            client, publisher, model_id, "good", _adapter(artifacts, "good", seed=0)
        )
        bad = _promote_by_events(
            client, publisher, model_id, "bad", _adapter(artifacts, "bad", seed=1)
        )
        bad_id = bad.rsplit("/", 1)[-1]
        serving_process.wait_until(
            lambda: _serves(serving, bad), timeout=180, what="serving the bad checkpoint"
        )
        # Prometheus scrapes the registry and sees what serves traffic
        prometheus.wait_until(
            lambda: bool(
                prometheus_query(
                    prometheus_url,
                    f'tuneline_model_production_info{{model="{model_id}",checkpoint="{bad_id}"}}',
                )
            ),
            timeout=180,
            what="Prometheus scraping the production checkpoint",
        )
        assert not _firing(prometheus_url, model_id)

        # 20 labelled outcomes are too few for any verdict, however bad they look
        first_bad_prediction = time.monotonic()
        assert _traffic(serving, model, right=5, total=20) == {bad}
        registry.wait_until(
            lambda: _live_trials(registry_metrics_url, model_id) == 20,
            timeout=60,
            what="the first 20 outcomes counted",
        )
        early = scrape(registry_metrics_url)
        assert _value(early, "tuneline_model_live_quality_below_floor", model=model_id) == 0
        # live traffic on the bad checkpoint (55 % right) until serving swaps back
        traffic = LiveTraffic(serving, model, bad)
        clients = [threading.Thread(target=traffic.run) for _ in range(3)]
        for thread in clients:
            thread.start()
        stack.callback(lambda: [thread.join(60) for thread in clients])
        stack.callback(traffic.stop.set)
        labels = {"model": model_id, "checkpoint": bad_id}
        registry.wait_until(
            lambda: (
                _value(
                    scrape(registry_metrics_url),
                    "tuneline_model_live_quality_below_floor",
                    **labels,
                )
                == 1
            ),
            timeout=300,
            what="the counted live quality surely below the floor",
        )
        started = time.monotonic()
        counted = scrape(registry_metrics_url)
        upper = _value(counted, "tuneline_model_live_quality_upper_bound", **labels)
        lower = _value(counted, "tuneline_model_live_quality_lower_bound", **labels)
        assert lower < BAD_RIGHT / BAD_OF < upper < FLOOR
        assert _value(counted, "tuneline_model_live_quality_trials", **labels) >= 100

        alert = eventually(
            lambda: _firing(prometheus_url, model_id), timeout=180, what=f"{ALERT} firing"
        )
        fired_after = time.monotonic() - started
        assert alert["labels"] == {
            "alertname": ALERT,
            "severity": "critical",
            "action": "rollback",
            "model": model_id,
            "checkpoint": bad_id,
            "metric": "accuracy",
            "owner": "unowned",  # the model names no owner (rules/scorecard.yml)
        }
        assert f"below the model's floor of {FLOOR:g}" in alert["annotations"]["description"]
        assert re.search(r"over \d+ outcomes", alert["annotations"]["description"])

        eventually(
            lambda: client.get_production_alias(f"models/{model_id}").checkpoint == good,
            timeout=180,
            what="production rolled back to the first checkpoint",
        )
        rolled_back_after = time.monotonic() - started
        # serving follows: the next answers come from the first checkpoint again
        serving_process.wait_until(
            lambda: traffic.served(good) > 0, timeout=120, what="serving swapped back"
        )
        traffic.stop.set()
        for thread in clients:
            thread.join(60)
        assert traffic.errors == [], "a request failed during the swap back"
        swapped_back_after = traffic.first_answer[good] - first_bad_prediction
        bad_served = traffic.served(bad) + 20

        # exactly one ModelRolledBack, caused by the alert: read once the registry process has
        # sent all it staged (its SQLite database, under the data directory it was given)
        registry_database = tmp_path / "data" / "registry" / "registry.db"
        with service_database(f"sqlite:///{registry_database.resolve()}") as registry_db:
            records: list[Any] = read_all_sent(
                kafka_bootstrap,
                ROLLED_BACK,
                lambda r: getattr(r, "key", None) == f"models/{model_id}".encode(),
                expected=1,
                outboxes=[registry_db],
            )
        assert len(records) == 1, f"{len(records)} ModelRolledBack events for one incident"
        rolled = events_pb2.ModelRolledBack.FromString(records[0].value)
        assert (rolled.from_checkpoint, rolled.to_checkpoint) == (bad, good)
        assert rolled.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_ALERT
        assert rolled.actor == "alertmanager"
        assert rolled.cause.startswith("alert:")
        reason = re.match(rf"Live accuracy of {model_id} is at most ([0-9.e-]+)", rolled.reason)
        assert reason, rolled.reason
        assert float(reason[1]) < FLOOR
        alert_to_rollback = (
            rolled.event_time.ToDatetime() - rolled.trigger_time.ToDatetime()
        ).total_seconds()
        with capsys.disabled():
            print(
                f"\nlive quality surely below the floor → {ALERT} firing in Prometheus:"
                f" {fired_after:.2f} s; → production rolled back (observed by GetAlias):"
                f" {rolled_back_after:.2f} s (registry clock, alert start → rollback:"
                f" {alert_to_rollback:.2f} s); first bad prediction → serving swapped back:"
                f" {swapped_back_after:.2f} s, {bad_served} bad predictions served"
            )
        assert rolled_back_after < MAX_SECONDS_TO_ROLLBACK

        # the alert resolves by itself: the old checkpoint's live series are gone
        eventually(
            lambda: (
                not any(
                    a["labels"]["alertname"] == ALERT and a["labels"].get("model") == model_id
                    for a in prometheus_alerts(prometheus_url)
                )
            ),
            timeout=180,
            what=f"{ALERT} to resolve after the rollback",
        )
        assert client.get_production_alias(f"models/{model_id}").checkpoint == good

        # Alertmanager delivered it to the webhook with the right token; one rollback came of it
        alertmanager_metrics = scrape(f"{alertmanager_url}/metrics")
        assert (
            _value(alertmanager_metrics, "alertmanager_notifications_total", integration="webhook")
            >= 1
        )
        assert (
            _value(
                alertmanager_metrics,
                "alertmanager_notifications_failed_total",
                integration="webhook",
            )
            == 0
        )
        registry_metrics = scrape(registry_metrics_url)
        assert _value(registry_metrics, "tuneline_registry_webhook_requests_total", code="401") == 0
        assert _value(registry_metrics, "tuneline_registry_webhook_requests_total", code="200") >= 1
        assert (
            _value(
                registry_metrics, "tuneline_registry_alerts_received_total", outcome="rolled_back"
            )
            == 1
        )
        assert (
            _value(
                registry_metrics, "tuneline_model_rollbacks_total", model=model_id, trigger="alert"
            )
            == 1
        )
        (last_move, *_) = reversed(
            list(client.list_alias_history(f"models/{model_id}/aliases/production"))
        )
        assert last_move.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_ALERT
        assert last_move.to_checkpoint == good

        for process in (serving_process, prometheus, alertmanager, registry):
            assert process.stop() == 0, (
                f"{process.name} did not stop cleanly:\n{process.log_tail()}"
            )
