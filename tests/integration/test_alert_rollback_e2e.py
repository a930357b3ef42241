"""The alert-driven rollback end to end, with the real binaries.

The registry runs as its own process on a real broker; Debian's ``/usr/bin/prometheus`` loads
the project's rule files (``for:`` shortened, 1 s scrape and evaluation intervals) and scrapes
the registry; ``/usr/bin/prometheus-alertmanager`` runs the project's ``alertmanager.yml``
with its rollback webhook pointed at the registry (bearer token from a file, 1 s group wait).
A model with a floor gets two checkpoints promoted through real CheckpointReady and
EvaluationCompleted events; live-quality reports with counts then feed the registry's
confidence sequence: a first report too small to judge changes nothing, and once the upper
bound is below the floor the alert must fire (the rule has no ``for:``), make Alertmanager call
the webhook, roll production back to the first checkpoint, put one ModelRolledBack on Kafka,
and resolve the alert.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.events import KafkaEventPublisher, ensure_topics, topic_for
from tests.fixtures.events import read_records, start_group_at_end
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
    checkpoint_ready,
    evaluation_completed,
    model_definition,
    publish,
    registry_checkpoint,
)
from tuneline.client.registry import RegistryClient
from tuneline.devtools.kafka import free_port
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.registry.v1 import events_pb2, resources_pb2
from tuneline.trainer.v1 import events_pb2 as trainer_events

pytestmark = pytest.mark.integration

ALERT = "TunelineModelLiveQualityBelowFloor"
FLOOR = 0.7
#: Labelled outcomes of the bad checkpoint: 1,100 right of 2,000 (55 %).
BAD_SUCCESSES, BAD_TRIALS = 1100, 2000
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

T = TypeVar("T")


def _wait_for(condition: Callable[[], T | None], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _serving(client: RegistryClient) -> bool:
    try:
        list(client.list_models(page_size=1))
    except Exception:  # noqa: BLE001 - not listening yet
        return False
    return True


def _promote_by_events(
    client: RegistryClient, publisher: KafkaEventPublisher, model_id: str, job: str
) -> str:
    """What the trainer and evaluator publish for a good checkpoint; returns its registry name."""
    baseline = client.production(f"models/{model_id}").checkpoint
    publish(publisher, checkpoint_ready(model_id, job, 100))
    publish(
        publisher,
        evaluation_completed(
            model_id,
            job,
            100,
            evaluation=f"evaluations/{model_id}-{job}",
            baseline_checkpoint=baseline,
        ),
    )
    name = registry_checkpoint(model_id, job, 100)
    _wait_for(
        lambda: client.production(f"models/{model_id}").checkpoint == name,
        timeout=180,
        what=f"{name} in production",
    )
    return name


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

        # a model with a floor, and two good checkpoints promoted one after the other
        model_id = f"e2e-{uuid.uuid4().hex[:10]}"
        client.create_model(model_id, model_definition(floor=FLOOR))
        good = _promote_by_events(client, publisher, model_id, "good")
        bad = _promote_by_events(client, publisher, model_id, "bad")
        bad_id = bad.rsplit("/", 1)[-1]
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

        # 20 outcomes are too few for any verdict, however bad they look
        early = client.report_live_quality(
            f"models/{model_id}",
            metric="accuracy",
            successes=5,
            trials=20,
            source="e2e-feedback",
            request_id="e2e-window-1",
        )
        assert (early.total_trials, early.below_floor) == (20, False)
        started = time.monotonic()
        report = client.report_live_quality(
            f"models/{model_id}",
            metric="accuracy",
            successes=BAD_SUCCESSES - 5,
            trials=BAD_TRIALS - 20,
            window_seconds=300,
            source="e2e-feedback",
            request_id="e2e-window-2",
        )
        assert report.checkpoint == bad
        assert (report.total_successes, report.total_trials) == (BAD_SUCCESSES, BAD_TRIALS)
        assert report.lower_bound < BAD_SUCCESSES / BAD_TRIALS < report.upper_bound < FLOOR
        assert report.below_floor
        assert report.floor == pytest.approx(FLOOR)

        alert = _wait_for(
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
        }
        assert f"below the model's floor of {FLOOR:g}" in alert["annotations"]["description"]
        assert f"over {BAD_TRIALS} outcomes" in alert["annotations"]["description"]

        _wait_for(
            lambda: client.production(f"models/{model_id}").checkpoint == good,
            timeout=180,
            what="production rolled back to the first checkpoint",
        )
        rolled_back_after = time.monotonic() - started

        # exactly one ModelRolledBack, caused by the alert
        records: list[Any] = read_records(
            kafka_bootstrap,
            ROLLED_BACK,
            lambda r: getattr(r, "key", None) == f"models/{model_id}".encode(),
            expected=1,
            settle=2.0,
        )
        assert len(records) == 1, f"{len(records)} ModelRolledBack events for one incident"
        rolled = events_pb2.ModelRolledBack.FromString(records[0].value)
        assert (rolled.from_checkpoint, rolled.to_checkpoint) == (bad, good)
        assert rolled.trigger == resources_pb2.ALIAS_MOVE_TRIGGER_ROLLBACK_ALERT
        assert rolled.actor == "alertmanager"
        assert rolled.cause.startswith("alert:")
        assert rolled.reason.startswith(
            f"Live accuracy of {model_id} is at most {report.upper_bound:.4g}"
        )
        server_seconds = (
            rolled.event_time.ToDatetime() - report.report_time.ToDatetime()
        ).total_seconds()
        alert_to_rollback = (
            rolled.event_time.ToDatetime() - rolled.trigger_time.ToDatetime()
        ).total_seconds()
        with capsys.disabled():
            print(
                f"\nbad live-quality report → {ALERT} firing in Prometheus: {fired_after:.2f} s;"
                f" → production rolled back (observed by GetAlias): {rolled_back_after:.2f} s"
                f" (registry clock, report → rollback: {server_seconds:.2f} s;"
                f" alert start → rollback: {alert_to_rollback:.2f} s)"
            )
        assert rolled_back_after < MAX_SECONDS_TO_ROLLBACK

        # the alert resolves by itself: the old checkpoint's live series are gone
        _wait_for(
            lambda: (
                not any(
                    a["labels"]["alertname"] == ALERT and a["labels"].get("model") == model_id
                    for a in prometheus_alerts(prometheus_url)
                )
            ),
            timeout=180,
            what=f"{ALERT} to resolve after the rollback",
        )
        assert client.production(f"models/{model_id}").checkpoint == good

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

        for process in (prometheus, alertmanager, registry):
            assert process.stop() == 0, (
                f"{process.name} did not stop cleanly:\n{process.log_tail()}"
            )
