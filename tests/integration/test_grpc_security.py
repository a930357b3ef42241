"""Transport security on real loopback servers: TLS, mutual TLS, certificate identities, and
certificates rotated on disk without a restart."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from shared.grpc import (
    ClientSecurity,
    GrpcServer,
    GrpcServerMetrics,
    ServerSecurity,
    build_grpc_server,
    create_channel,
)
from shared.grpc.auth import SecurityNotConfigured
from shared.settings import CommonSettings
from tests.fixtures.pki import (
    IssuedCertificate,
    LocalCA,
    lay_out_like_a_secret_volume,
    spiffe_id,
)
from tests.fixtures.secured_grpc import answering_services, call_rpc, every_rpc

RPC = {m.name: m for m in every_rpc()}


@dataclass
class MutualTlsServer:
    server: GrpcServer
    ca: LocalCA
    server_cert: IssuedCertificate

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(
        self, client: IssuedCertificate | None, ca_file: Path | None = None
    ) -> grpc.Channel:
        security = ClientSecurity(
            tls=True,
            ca_file=ca_file or self.ca.ca_file,
            cert_file=client.cert_file if client else None,
            key_file=client.key_file if client else None,
        )
        return create_channel(self.target, security=security, max_attempts=1)


def _serve(settings: CommonSettings) -> GrpcServer:
    server = build_grpc_server(
        host="127.0.0.1",
        port=0,
        services=answering_services(),
        metrics=GrpcServerMetrics(CollectorRegistry()),
        security=ServerSecurity.from_settings(settings),
        grace_seconds=0,
        health_port=0,
    )
    server.start()
    return server


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[MutualTlsServer]:
    ca = LocalCA(tmp_path / "pki")
    server_cert = ca.issue("server", uri=spiffe_id("service", "registry"), server=True)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"bindings": {"ops-robot": ["operator"]}}))
    # the server reads copies, so a test can rotate them in place
    live = tmp_path / "live"
    live.mkdir()
    for source in (server_cert.cert_file, server_cert.key_file, ca.ca_file):
        shutil.copy(source, live / source.name)
    server = _serve(
        CommonSettings(
            auth_mode="enforce",
            tls_cert_file=live / server_cert.cert_file.name,
            tls_key_file=live / server_cert.key_file.name,
            tls_client_ca_file=live / ca.ca_file.name,
            auth_policy_file=policy,
        )
    )
    try:
        yield MutualTlsServer(
            server,
            ca,
            IssuedCertificate(live / server_cert.cert_file.name, live / server_cert.key_file.name),
        )
    finally:
        server.stop(0)


def test_a_plaintext_client_is_refused(mtls: MutualTlsServer) -> None:
    with create_channel(mtls.target, security=ClientSecurity(), max_attempts=1) as channel:
        assert call_rpc(channel, RPC["GetAlias"])[0] == grpc.StatusCode.UNAVAILABLE


def test_a_client_without_a_certificate_is_refused(mtls: MutualTlsServer) -> None:
    with mtls.channel(None) as channel:
        assert call_rpc(channel, RPC["GetAlias"])[0] == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_an_untrusted_ca_is_refused(
    mtls: MutualTlsServer, tmp_path: Path
) -> None:
    rogue = LocalCA(tmp_path / "rogue", name="rogue CA")
    forged = rogue.issue("forged", uri=spiffe_id("user", "admin"))
    with mtls.channel(forged) as channel:
        assert call_rpc(channel, RPC["RollbackModel"])[0] == grpc.StatusCode.UNAVAILABLE


def test_a_service_certificate_holds_exactly_its_service_role(mtls: MutualTlsServer) -> None:
    evaluator = mtls.ca.issue("evaluator", uri=spiffe_id("service", "evaluator"))
    with mtls.channel(evaluator) as channel:
        assert call_rpc(channel, RPC["GetAlias"]) == (
            grpc.StatusCode.OK,
            spiffe_id("service", "evaluator"),
        )
        assert call_rpc(channel, RPC["PromoteCheckpoint"])[0] == grpc.StatusCode.PERMISSION_DENIED


def test_a_common_name_certificate_gets_the_roles_bound_to_it(mtls: MutualTlsServer) -> None:
    robot = mtls.ca.issue("robot", common_name="ops-robot")
    stranger = mtls.ca.issue("stranger", common_name="stranger")
    with mtls.channel(robot) as channel:
        assert call_rpc(channel, RPC["RollbackModel"]) == (grpc.StatusCode.OK, "ops-robot")
    with mtls.channel(stranger) as channel:
        assert call_rpc(channel, RPC["GetAlias"])[0] == grpc.StatusCode.PERMISSION_DENIED


def test_the_server_certificate_rotates_without_a_restart(
    mtls: MutualTlsServer, tmp_path: Path
) -> None:
    client = mtls.ca.issue("client", common_name="ops-robot")
    new_ca = LocalCA(tmp_path / "new-ca", name="next CA")
    renewed = new_ca.issue("server-next", uri=spiffe_id("service", "registry"), server=True)
    with mtls.channel(client, ca_file=new_ca.ca_file) as channel:  # trusts only the next CA
        assert call_rpc(channel, RPC["RollbackModel"])[0] == grpc.StatusCode.UNAVAILABLE
    # what cert-manager does to a mounted Secret: new files in place
    shutil.copy(renewed.key_file, mtls.server_cert.key_file)
    shutil.copy(renewed.cert_file, mtls.server_cert.cert_file)
    with mtls.channel(client, ca_file=new_ca.ca_file) as channel:
        assert call_rpc(channel, RPC["RollbackModel"]) == (grpc.StatusCode.OK, "ops-robot")


def test_a_renewed_kubernetes_secret_volume_is_served_without_a_restart(tmp_path: Path) -> None:
    """The prod overlay mounts each service's cert-manager Secret as a folder: a renewal swaps
    the folder's ``..data`` link, and the next handshake presents the new certificate."""
    ca = LocalCA(tmp_path / "pki")
    first = ca.issue("server", uri=spiffe_id("service", "registry"), server=True)
    volume = tmp_path / "tls"
    volume.mkdir()
    keys = {"tls.crt": first.cert_file, "tls.key": first.key_file, "ca.crt": ca.ca_file}
    lay_out_like_a_secret_volume(volume, keys, "2026_01_01_00_00_00.1")
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"bindings": {"ops-robot": ["operator"]}}))
    server = _serve(
        CommonSettings(
            auth_mode="enforce",
            tls_cert_file=volume / "tls.crt",
            tls_key_file=volume / "tls.key",
            tls_client_ca_file=volume / "ca.crt",
            auth_policy_file=policy,
        )
    )
    try:
        served = MutualTlsServer(server, ca, first)
        client = ca.issue("client", common_name="ops-robot")
        next_ca = LocalCA(tmp_path / "next-ca", name="next CA")
        renewed = next_ca.issue("server-next", uri=spiffe_id("service", "registry"), server=True)
        with served.channel(client, ca_file=next_ca.ca_file) as channel:
            assert call_rpc(channel, RPC["RollbackModel"])[0] == grpc.StatusCode.UNAVAILABLE
        keys |= {"tls.crt": renewed.cert_file, "tls.key": renewed.key_file}
        lay_out_like_a_secret_volume(volume, keys, "2026_02_01_00_00_00.2")
        with served.channel(client, ca_file=next_ca.ca_file) as channel:
            assert call_rpc(channel, RPC["RollbackModel"]) == (grpc.StatusCode.OK, "ops-robot")
    finally:
        server.stop(0)


def test_probes_without_tls_reach_health_and_only_health(mtls: MutualTlsServer) -> None:
    target = f"127.0.0.1:{mtls.server.health_port}"
    with create_channel(target, security=ClientSecurity(), max_attempts=1) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert call_rpc(channel, RPC["RollbackModel"])[0] == grpc.StatusCode.UNIMPLEMENTED


def test_enforce_mode_without_certificates_refuses_to_start() -> None:
    with pytest.raises(SecurityNotConfigured, match="TLS_CERT_FILE"):
        ServerSecurity.from_settings(CommonSettings(auth_mode="enforce"))


def test_enforce_mode_without_a_way_to_authenticate_refuses_to_start(tmp_path: Path) -> None:
    cert = LocalCA(tmp_path).issue("server", server=True)
    with pytest.raises(SecurityNotConfigured, match="CLIENT_CA_FILE"):
        ServerSecurity.from_settings(
            CommonSettings(
                auth_mode="enforce", tls_cert_file=cert.cert_file, tls_key_file=cert.key_file
            )
        )
