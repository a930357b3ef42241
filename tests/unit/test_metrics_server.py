"""The /metrics endpoint serves the service's own registry on loopback."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from shared.metrics import start_metrics_server


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


def test_serves_the_given_registry_and_stops() -> None:
    registry = CollectorRegistry()
    counter = Counter("tuneline_unit_things_total", "Things.", ("kind",), registry=registry)
    counter.labels("a").inc(3)

    server = start_metrics_server(registry, port=0)
    try:
        assert server.port > 0
        url = f"http://127.0.0.1:{server.port}/metrics"
        status, content_type, body = _get(url)
        assert status == 200
        assert content_type.startswith("text/plain")
        assert 'tuneline_unit_things_total{kind="a"} 3.0' in body
        # Only this registry: nothing from the process-global default registry.
        assert "python_gc_objects_collected_total" not in body
        assert "process_cpu_seconds_total" not in body

        counter.labels("a").inc()
        assert 'tuneline_unit_things_total{kind="a"} 4.0' in _get(url)[2]
    finally:
        server.stop()

    assert not server._thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=1)


def test_two_servers_do_not_share_metrics() -> None:
    first_registry, second_registry = CollectorRegistry(), CollectorRegistry()
    Counter("tuneline_unit_first_total", "First.", registry=first_registry).inc()
    Counter("tuneline_unit_second_total", "Second.", registry=second_registry).inc()

    first = start_metrics_server(first_registry)
    second = start_metrics_server(second_registry)
    try:
        assert first.port != second.port
        first_body = _get(f"http://127.0.0.1:{first.port}/metrics")[2]
        second_body = _get(f"http://127.0.0.1:{second.port}/metrics")[2]
    finally:
        first.stop()
        second.stop()

    assert "tuneline_unit_first_total 1.0" in first_body
    assert "tuneline_unit_second_total" not in first_body
    assert "tuneline_unit_second_total 1.0" in second_body
    assert "tuneline_unit_first_total" not in second_body
    assert REGISTRY.get_sample_value("tuneline_unit_first_total") is None
