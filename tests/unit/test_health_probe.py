"""The container health check: ``python -m shared.grpc.health_probe`` against a real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shared.grpc.health_probe import SERVING_EXIT, UNHEALTHY_EXIT, main
from tuneline.devtools.kafka import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
Status = health_pb2.HealthCheckResponse


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    """A gRPC server on a loopback port serving only ``grpc.health.v1``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_serving_server_exits_zero(
    health_server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    target, servicer = health_server
    servicer.set("", Status.SERVING)
    assert main([target]) == SERVING_EXIT
    assert capsys.readouterr().out.strip() == f"{target}: SERVING"


def test_draining_server_is_unhealthy(health_server: tuple[str, health.HealthServicer]) -> None:
    # What a service reports between SIGTERM and the end of its grace period.
    target, servicer = health_server
    servicer.set("", Status.NOT_SERVING)
    assert main([target]) == UNHEALTHY_EXIT


def test_named_service_is_checked_on_its_own(
    health_server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    target, servicer = health_server
    servicer.set("", Status.SERVING)
    servicer.set("tuneline.dataset.v1.DatasetService", Status.NOT_SERVING)
    assert main([target, "--service", "tuneline.dataset.v1.DatasetService"]) == UNHEALTHY_EXIT
    assert main([target, "--service", "tuneline.nothing.v1.Nothing"]) == UNHEALTHY_EXIT
    assert "health check failed: NOT_FOUND" in capsys.readouterr().err


def test_nothing_listening_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    assert main([target, "--timeout", "1"]) == UNHEALTHY_EXIT
    assert "health check failed" in capsys.readouterr().err


def test_module_runs_as_the_images_healthcheck_runs_it(
    health_server: tuple[str, health.HealthServicer],
) -> None:
    target, servicer = health_server
    servicer.set("", Status.SERVING)
    command = [sys.executable, "-m", "shared.grpc.health_probe", target]
    serving = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert serving.returncode == 0, serving.stderr
    servicer.set("", Status.NOT_SERVING)
    draining = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert draining.returncode == 1
    assert draining.stdout.strip() == f"{target}: NOT_SERVING"
