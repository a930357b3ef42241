"""``tuneline up``'s engine: a broker and six service processes, up, locked, and down; secured
by default with the stack's own CA, as production runs."""

from __future__ import annotations

import json
import os
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from shared.security.tls import channel_credentials
from tests.fixtures.pki import LocalCA
from tuneline.cli.main import app as cli
from tuneline.devtools.kafka import free_port
from tuneline.devtools.local_pki import LOCAL_SERVER_NAME, spiffe_id
from tuneline.devtools.stack import LocalStack, StackAlreadyRunning, StackPorts

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _health(
    target: str, credentials: grpc.ChannelCredentials | None
) -> health_pb2.HealthCheckResponse:
    options = [("grpc.ssl_target_name_override", LOCAL_SERVER_NAME)]
    channel = (
        grpc.secure_channel(target, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


def test_stack_comes_up_secured_refuses_a_second_up_and_goes_down(tmp_path):
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
    stack = LocalStack(tmp_path / "home", ports, secure=True)
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
        credentials = state.client_credentials()
        assert credentials is not None, "stack.json names the stack's credentials"
        as_the_cli = channel_credentials(
            ca_file=credentials.ca_file,
            cert_file=credentials.cli.cert_file,
            key_file=credentials.cli.key_file,
        )
        stranger_ca = LocalCA(tmp_path / "stranger")
        stranger = stranger_ca.issue("me", uri=spiffe_id("user", "local-admin"))
        as_a_stranger = channel_credentials(
            ca_file=credentials.ca_file, cert_file=stranger.cert_file, key_file=stranger.key_file
        )
        for service in state.services:
            assert _health(service.target, as_the_cli).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            # plaintext, no client certificate, or one from another CA (naming the local admin
            # even): the handshake fails, nothing is answered
            for refused in (None, channel_credentials(ca_file=credentials.ca_file), as_a_stranger):
                with pytest.raises(grpc.RpcError) as caught:
                    _health(service.target, refused)
                assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            assert (tmp_path / "home" / "logs" / f"{service.name}.log").exists()
            assert service.grpc_port == moved[f"TUNELINE_{service.name.upper()}_GRPC_PORT"]
        assert state.kafka_bootstrap == f"127.0.0.1:{moved['TUNELINE_KAFKA_PORT']}"
        # the command line finds the moved services, and its credentials, through the stack's
        # home alone (and leaves this process' environment as it was)
        listed = CliRunner().invoke(
            cli, ["splits", "policy", "get", "anything"], env={"TUNELINE_HOME": str(stack.home)}
        )
        assert listed.exit_code == 0, listed.output
        assert "TUNELINE_TLS_CERT_FILE" not in os.environ
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
