"""Prometheus, Alertmanager and Grafana configuration, checked by the real tools.

``promtool`` (Debian's ``prometheus`` package) validates the scrape configuration and the rule
files, runs the rule unit tests in ``deploy/prometheus/tests`` and parses every dashboard
query; ``amtool`` (Debian's ``prometheus-alertmanager``) validates the Alertmanager
configuration and resolves each alert's route. CI installs both, so a missing ``promtool``
fails here instead of skipping. That the metrics named are really exported is
``tests/integration/test_metrics_contract.py``'s business.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.registry.settings import RegistrySettings
from tests.fixtures.observability import (
    DASHBOARD_FILES,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    dashboard_variables_used,
    exposed_metric_names,
    grafana_to_promql,
    metric_names,
    recorded_names,
)

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"

INSTALL_HINT = "apt-get install -y prometheus prometheus-alertmanager (Debian's packages)"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH; it is part of the test toolchain: {INSTALL_HINT}")
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def _alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [rule for rule in group["rules"] if "alert" in rule]
    return rules


def _duration_seconds(text: str) -> float:
    """A Prometheus duration (``30s``, ``5m``, ``24h``, ``1h30m``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w)", text)
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


# --- promtool -----------------------------------------------------------------------------


def test_scrape_configuration_is_valid_and_loads_every_rule_file() -> None:
    result = _run(_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout


def test_rule_files_are_valid() -> None:
    assert RULE_FILES, "deploy/prometheus/rules/ has no rule files"
    result = _run(_tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    assert RULE_TEST_FILES, "deploy/prometheus/tests/ has no promtool test files"
    result = _run(_tool("promtool"), "test", "rules", *map(str, RULE_TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: dict[str, int] = defaultdict(int)
    silent: dict[str, int] = defaultdict(int)
    tested_rule_files: set[Path] = set()
    for path in RULE_TEST_FILES:
        document = yaml.safe_load(path.read_text())
        tested_rule_files |= {(path.parent / f).resolve() for f in document["rule_files"]}
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                counter = firing if check.get("exp_alerts") else silent
                counter[check["alertname"]] += 1
    assert tested_rule_files == {p.resolve() for p in RULE_FILES}
    for rule in _alert_rules():
        name = rule["alert"]
        assert firing[name], f"{name} has no promtool case where it fires"
        assert silent[name], f"{name} has no promtool case where it stays silent"


def test_every_alert_has_a_severity_summary_and_runbook() -> None:
    names = [rule["alert"] for rule in _alert_rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key, "").strip(), f"{rule['alert']} has no {key}"


# --- Alertmanager -------------------------------------------------------------------------


def _alertmanager() -> dict[str, Any]:
    return yaml.safe_load(ALERTMANAGER_CONFIG.read_text())


def _rollback_route() -> dict[str, Any]:
    (route,) = [
        r for r in _alertmanager()["route"]["routes"] if 'action="rollback"' in r["matchers"]
    ]
    return route


def test_rollback_route_calls_the_registry_webhook_with_a_bearer_token_file() -> None:
    route = _rollback_route()
    (receiver,) = [r for r in _alertmanager()["receivers"] if r["name"] == route["receiver"]]
    (webhook,) = receiver["webhook_configs"]
    defaults = RegistrySettings.model_fields
    assert webhook["url"] == (
        f"http://registry:{defaults['webhook_port'].default}{defaults['webhook_path'].default}"
    )
    authorization = webhook["http_config"]["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer"
    assert authorization["credentials_file"].startswith("/run/secrets/")
    assert "credentials" not in authorization, "the token comes from a mounted secret file"


def test_one_incident_cannot_trigger_a_second_rollback() -> None:
    route = _rollback_route()
    (receiver,) = [r for r in _alertmanager()["receivers"] if r["name"] == route["receiver"]]
    (webhook,) = receiver["webhook_configs"]
    assert route["group_by"] == ["alertname", "model"]
    assert _duration_seconds(route["group_wait"]) <= 30, "a rollback should not wait"
    assert _duration_seconds(route["repeat_interval"]) >= 24 * 3600
    assert webhook["send_resolved"] is False, "a recovery must not reach the rollback webhook"
    assert not route.get("continue", False)


def test_alertmanager_configuration_is_valid() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip(f"amtool is not installed: {INSTALL_HINT}")
    result = _run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            ["action=rollback", "alertname=TunelineModelQualityBelowFloor", "model=support"],
            "registry-rollback",
        ),
        (["alertname=TunelineServiceDown", "job=registry", "severity=critical"], "sre"),
        (["alertname=TunelineModelQualityBelowFloor", "model=support"], "sre"),
        # by owner: a team with a route gets its alerts; a rollback still goes to the webhook
        (
            ["alertname=TunelineModelRolledBack", "model=support", "owner=support-ml"],
            "team-support-ml",
        ),
        (
            [
                "action=rollback",
                "alertname=TunelineModelLiveQualityBelowFloor",
                "model=support",
                "owner=support-ml",
            ],
            "registry-rollback",
        ),
        (["alertname=TunelineModelRolledBack", "model=reviews", "owner=unowned"], "sre"),
        (["alertname=TunelineServiceDown", "job=registry", "owner=platform"], "sre"),
    ],
)
def test_alerts_route_to_the_right_receiver(labels: list[str], receiver: str) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip(f"amtool is not installed: {INSTALL_HINT}")
    result = _run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receiver}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_each_alert_reaches_its_receiver(rule: dict[str, Any]) -> None:
    """action="rollback" alerts reach the registry's webhook and only there; the rest reach SRE."""
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip(f"amtool is not installed: {INSTALL_HINT}")
    labels = {**rule["labels"], "alertname": rule["alert"], "model": "support"}
    expected = "registry-rollback" if labels.get("action") == "rollback" else "sre"
    result = _run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={expected}",
        *(f"{key}={value}" for key, value in sorted(labels.items())),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rollback_alerts_name_the_model_and_the_checkpoint() -> None:
    """The registry rolls back the alert's `model` only while `checkpoint` is its production."""
    rollback_alerts = {
        r["alert"] for r in _alert_rules() if r["labels"].get("action") == "rollback"
    }
    assert rollback_alerts, "no alert drives a rollback"
    checked: set[str] = set()
    for path in RULE_TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["alertname"] not in rollback_alerts:
                    continue
                for alert in check.get("exp_alerts") or []:
                    assert {"model", "checkpoint"} <= alert["exp_labels"].keys(), check
                    checked.add(check["alertname"])
    assert checked == rollback_alerts


def test_the_registry_allow_lists_exactly_the_rollback_alerts() -> None:
    """The webhook ignores alerts off TUNELINE_REGISTRY_ROLLBACK_ALERT_NAMES: its default is
    every rule labelled action="rollback", so a new rollback rule must be added there too."""
    rollback_alerts = {
        r["alert"] for r in _alert_rules() if r["labels"].get("action") == "rollback"
    }
    assert set(RegistrySettings().rollback_alert_names) == rollback_alerts


def test_every_alert_names_an_owner() -> None:
    """An alert about a model joins the model's owner (``tuneline:model_owner``); an alert about
    the platform says ``owner: platform``; and every tested firing alert shows its owner."""
    join = "* on (model) group_left (owner) tuneline:model_owner"
    for rule in _alert_rules():
        static = rule["labels"].get("owner")
        joined = join in " ".join(rule["expr"].split())
        assert bool(static) != joined, f"{rule['alert']}: a static owner or the join, not both"
        assert static in (None, "platform"), rule["alert"]
    for path in RULE_TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                for alert in check.get("exp_alerts") or []:
                    assert alert["exp_labels"].get("owner"), (path.name, check["alertname"])


# --- Grafana dashboards -------------------------------------------------------------------

DATASOURCES = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"


def _dashboards() -> dict[str, dict[str, Any]]:
    assert DASHBOARD_FILES, "deploy/grafana/dashboards/ has no dashboards"
    return {path.name: dashboard(path) for path in DASHBOARD_FILES}


def test_dashboards_are_provisionable() -> None:
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uids = [d["uid"] for d in _dashboards().values()]
    assert len(uids) == len(set(uids)), "dashboard uids must be unique"
    for name, document in _dashboards().items():
        assert 0 < len(document["uid"]) <= 40, name
        assert document["title"].startswith("Tuneline / "), name
        occupied: set[tuple[int, int]] = set()
        for panel in dashboard_panels(document):
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']} is wider than the grid"
            cells = {
                (grid["x"] + dx, grid["y"] + dy)
                for dx in range(grid["w"])
                for dy in range(grid["h"])
            }
            assert not cells & occupied, f"{name}: {panel['title']} overlaps another panel"
            occupied |= cells
            if panel["type"] == "row":
                continue
            assert panel.get("description"), f"{name}: {panel['title']} says nothing about itself"
            assert panel["datasource"]["uid"] == datasource["uid"], f"{name}: {panel['title']}"
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert ref_ids, f"{name}: {panel['title']} has no query"
            assert len(ref_ids) == len(set(ref_ids)), f"{name}: {panel['title']}"


def test_dashboard_variables_are_defined() -> None:
    for name, document in _dashboards().items():
        defined = {v["name"] for v in document.get("templating", {}).get("list", [])}
        used = set().union(
            *(
                dashboard_variables_used(e.text)
                for e in dashboard_expressions()
                if e.where.startswith(name)
            )
        )
        assert used <= defined, f"{name} uses undefined variables {sorted(used - defined)}"


def test_dashboards_use_only_recorded_rule_names_that_exist() -> None:
    used = {
        match
        for expression in dashboard_expressions()
        for match in re.findall(r"tuneline:[a-z0-9_:]+", expression.text)
    }
    assert used <= recorded_names(), f"no recording rule makes {sorted(used - recorded_names())}"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule), variables expanded."""
    rules = []
    for index, expression in enumerate(dashboard_expressions()):
        text = grafana_to_promql(expression.text)
        if not expression.is_promql:  # a variable query: label_values(<selector>, label)
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", text.strip())
            assert match, f"{expression.where}: unexpected variable query {expression.text!r}"
            text = match.group(1)
        rules.append({"record": f"dashboard:query_{index}", "expr": text})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = _run(_tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the metric-name extraction the contract test relies on ------------------------------


def test_metric_names_are_found_in_promql_and_in_prose() -> None:
    expr = (
        'sum by (job) (rate(tuneline_grpc_server_handled_total{grpc_code!="OK"}[5m])) '
        "/ on (job) group_left () tuneline:training_run_cost_budget "
        'and up{job="registry"} == 1 or alertmanager_notifications_failed_total'
    )
    assert metric_names(expr) == {
        "tuneline_grpc_server_handled_total",
        "up",
        "alertmanager_notifications_failed_total",
    }
    prose = 'Read tuneline_event_handling_seconds{job="x"}; TUNELINE_DATA_DIR; tuneline-data'
    assert metric_names(prose) == {"tuneline_event_handling_seconds"}
    assert metric_names("group_left(up_to) start-up") == set()


def test_exposed_names_include_metrics_without_samples() -> None:
    exposition = "\n".join(
        [
            "# HELP tuneline_model_rollbacks_total Rollbacks.",
            "# TYPE tuneline_model_rollbacks_total counter",
            "# HELP tuneline_model_rollback_seconds Time to rollback.",
            "# TYPE tuneline_model_rollback_seconds histogram",
            "# TYPE alertmanager_alerts gauge",
            'alertmanager_alerts{state="active"} 0',
            "tuneline_registry_parked_events 2.0",
        ]
    )
    assert exposed_metric_names(exposition) == {
        "tuneline_model_rollbacks_total",
        "tuneline_model_rollback_seconds_bucket",
        "tuneline_model_rollback_seconds_sum",
        "tuneline_model_rollback_seconds_count",
        "alertmanager_alerts",
        "tuneline_registry_parked_events",
    }
