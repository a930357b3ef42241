"""Alert rules and dashboards only name metrics that something really exports.

The six services boot in-process on the real broker (each with its own consumer group,
positioned at the end of its topics, so they sit idle), Alertmanager runs from Debian's
binary, and each ``/metrics`` is scraped. Every metric name in every PromQL expression of
``deploy/prometheus/rules`` and ``deploy/grafana/dashboards`` (annotations and variable
queries included) must be among the names scraped: ``tuneline_*`` from a service,
``alertmanager_*`` from Alertmanager. Only the series Prometheus synthesises itself (``up``)
are allowed without an exporter. A metric renamed in a service, or a typo in a rule, fails
here with the rule or panel that uses it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.dataset import bootstrap as dataset_bootstrap
from services.dataset.settings import DatasetSettings
from services.evaluator import bootstrap as evaluator_bootstrap
from services.evaluator.settings import EvaluatorSettings
from services.registry import bootstrap as registry_bootstrap
from services.registry.settings import RegistrySettings
from services.serving import bootstrap as serving_bootstrap
from services.serving.settings import ServingSettings
from services.splitter import bootstrap as splitter_bootstrap
from services.splitter.settings import SplitterSettings
from services.trainer import bootstrap as trainer_bootstrap
from services.trainer.settings import TrainerSettings
from shared.events import ensure_topics
from shared.runtime import ServiceRuntime, build_runtime
from shared.settings import CommonSettings
from tests.fixtures.events import start_group_at_end
from tests.fixtures.observability import (
    ALERTMANAGER_BINARY,
    SYNTHETIC_METRICS,
    Expression,
    alertmanager_argv,
    dashboard_expressions,
    exposed_families,
    exposed_metric_names,
    http_ok,
    managed,
    metric_names,
    rule_expressions,
    scrape,
    write_alertmanager_config,
)
from tuneline.devtools.kafka import free_port

pytestmark = pytest.mark.integration

SERVICES: dict[str, tuple[Any, type[Any]]] = {
    "dataset": (dataset_bootstrap, DatasetSettings),
    "splitter": (splitter_bootstrap, SplitterSettings),
    "trainer": (trainer_bootstrap, TrainerSettings),
    "evaluator": (evaluator_bootstrap, EvaluatorSettings),
    "registry": (registry_bootstrap, RegistrySettings),
    "serving": (serving_bootstrap, ServingSettings),
}

#: What every service exports through the shared runtime; proves each scrape was real.
SHARED_RUNTIME_METRICS = {
    "tuneline_grpc_server_handled_total",
    "tuneline_grpc_server_handling_seconds_bucket",
    "tuneline_events_consumed_total",
    "tuneline_kafka_consumer_lag",
    "tuneline_outbox_pending_events",
}


def _boot(name: str, kafka_bootstrap: str, data_dir: Path) -> ServiceRuntime:
    bootstrap, settings_type = SERVICES[name]
    group = f"test-metrics-{name}-{uuid.uuid4().hex[:8]}"
    runtime = build_runtime(
        bootstrap.SPEC,
        CommonSettings(kafka_bootstrap=kafka_bootstrap, data_dir=data_dir),
        settings_type(grpc_port=0, metrics_port=0, consumer_group=group),
    )
    if runtime.consumer is not None:
        # a fresh group would replay the shared broker's history; idle services are enough
        ensure_topics(kafka_bootstrap, runtime.consumer.topics)
        start_group_at_end(kafka_bootstrap, group, runtime.consumer.topics)
    runtime.start()
    return runtime


@dataclass(frozen=True)
class Exported:
    """What one exporter's ``/metrics`` carries."""

    series: set[str]
    families: set[str]

    @classmethod
    def of(cls, exposition: str) -> Exported:
        return cls(exposed_metric_names(exposition), exposed_families(exposition))


@pytest.fixture(scope="module")
def exported(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Exported]]:
    """What each service, and Alertmanager, exports: scraped from the live processes."""
    if not Path(ALERTMANAGER_BINARY).exists():
        pytest.fail(f"{ALERTMANAGER_BINARY} is missing: apt-get install -y prometheus-alertmanager")
    data_dir = tmp_path_factory.mktemp("metrics-contract")
    runtimes: dict[str, ServiceRuntime] = {}
    names: dict[str, Exported] = {}
    port = free_port()
    config = write_alertmanager_config(
        data_dir / "alertmanager",
        webhook_url="http://127.0.0.1:9/v1/alerts",  # never called: no alert is sent
        token_file=data_dir / "token",
    )
    try:
        with managed(
            "alertmanager",
            alertmanager_argv(config, data_dir / "am-data", port),
            data_dir / "alertmanager.log",
        ) as alertmanager:
            for name in SERVICES:
                runtimes[name] = _boot(name, kafka_bootstrap, data_dir)
            alertmanager.wait_until(
                lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"), timeout=30, what="/-/ready"
            )
            names["alertmanager"] = Exported.of(scrape(f"http://127.0.0.1:{port}/metrics"))
            for name, runtime in runtimes.items():
                metrics_url = f"http://127.0.0.1:{runtime.metrics_port}/metrics"
                names[name] = Exported.of(scrape(metrics_url))
        yield names
    finally:
        # in parallel: the trainer's stop waits for its worker pool's warm-up
        with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
            list(pool.map(lambda runtime: runtime.stop(), runtimes.values()))


def _unexported(
    expressions: list[Expression], exported: dict[str, Exported]
) -> dict[str, list[str]]:
    """Metric name → the places that use it, for names no one exports.

    PromQL must name series; text around it (annotations, variable queries) may also name a
    histogram by its family.
    """
    series = set().union(*(e.series for e in exported.values())) | SYNTHETIC_METRICS
    families = set().union(*(e.families for e in exported.values()))
    missing: dict[str, list[str]] = {}
    for expression in expressions:
        available = series if expression.is_promql else series | families
        for name in sorted(metric_names(expression.text) - available):
            missing.setdefault(name, []).append(expression.where)
    return missing


def _report(missing: dict[str, list[str]]) -> str:
    return "metrics no service exports:\n" + "\n".join(
        f"  {name}: used by {'; '.join(places)}" for name, places in sorted(missing.items())
    )


def test_every_service_was_scraped(exported: dict[str, Exported]) -> None:
    for name in SERVICES:
        series = exported[name].series
        assert series >= SHARED_RUNTIME_METRICS, f"{name}: {sorted(series)}"
    assert "alertmanager_notifications_failed_total" in exported["alertmanager"].series


def test_alert_rules_name_only_exported_metrics(exported: dict[str, Exported]) -> None:
    expressions = rule_expressions()
    used = set().union(*(metric_names(e.text) for e in expressions))
    assert len(used) > 20, f"the extraction found too few names to be trusted: {sorted(used)}"
    missing = _unexported(expressions, exported)
    assert not missing, _report(missing)


def test_dashboards_name_only_exported_metrics(exported: dict[str, Exported]) -> None:
    expressions = dashboard_expressions()
    used = set().union(*(metric_names(e.text) for e in expressions))
    assert len(used) > 30, f"the extraction found too few names to be trusted: {sorted(used)}"
    missing = _unexported(expressions, exported)
    assert not missing, _report(missing)
