"""``tuneline up``'s engine: a broker and six service processes, up, locked, and down."""

from __future__ import annotations

import json
import os
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from tuneline.cli.main import app as cli
from tuneline.devtools.kafka import free_port
from tuneline.devtools.stack import LocalStack, StackAlreadyRunning, StackPorts

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stack_comes_up_refuses_a_second_up_and_goes_down(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELINE_")}
    # every port moved with the variables the README documents, as `tuneline up` reads them
    moved = {
        "TUNELINE_KAFKA_PORT": free_port(),
        "TUNELINE_KAFKA_CONTROLLER_PORT": free_port(),
        "TUNELINE_REGISTRY_WEBHOOK_PORT": free_port(),
    }
    for name in ("dataset", "splitter", "trainer", "evaluator", "registry", "serving"):
        moved[f"TUNELINE_{name.upper()}_GRPC_PORT"] = free_port()
        moved[f"TUNELINE_{name.upper()}_METRICS_PORT"] = free_port()
    env |= {variable: str(port) for variable, port in moved.items()}
    ports = StackPorts.from_environment(env)
    stack = LocalStack(tmp_path / "home", ports)
    state = stack.up(timeout=120, env=env)
    try:
        assert [s.name for s in state.services] == [
            "dataset",
            "splitter",
            "trainer",
            "evaluator",
            "registry",
            "serving",
        ]
        for service in state.services:
            with grpc.insecure_channel(service.target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert (tmp_path / "home" / "logs" / f"{service.name}.log").exists()
            assert service.grpc_port == moved[f"TUNELINE_{service.name.upper()}_GRPC_PORT"]
        assert state.kafka_bootstrap == f"127.0.0.1:{moved['TUNELINE_KAFKA_PORT']}"
        # the command line finds the moved services through the stack's home alone
        listed = CliRunner().invoke(
            cli, ["splits", "policy", "get", "anything"], env={"TUNELINE_HOME": str(stack.home)}
        )
        assert listed.exit_code == 0, listed.output
        webhook = next(s for s in state.services if s.name == "registry").extra_ports["webhook"]
        assert webhook == moved["TUNELINE_REGISTRY_WEBHOOK_PORT"]
        token = stack.webhook_token_path.read_text()
        request = urllib.request.Request(
            f"http://127.0.0.1:{webhook}/v1/alerts",
            data=json.dumps({"version": "4", "status": "firing", "alerts": []}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert reply.status == 200, "the registry's webhook listens with the stack's token"
        with pytest.raises(StackAlreadyRunning):
            LocalStack(tmp_path / "home", ports).up(env=env)
        assert stack.running() is not None
    finally:
        stack.down(state)
    assert not any(_alive(s.pid) for s in state.services)
    assert stack.running() is None
    assert not stack.kafka.status().running
