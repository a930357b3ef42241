"""Clients follow their credential files without a restart: a renewed client certificate (the
kubelet swapping a mounted Secret's ``..data`` link) or a rotated token file is presented by the
next call on the same client object, on real gRPC over loopback with mutual TLS.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message_factory import GetMessageClass
from prometheus_client import CollectorRegistry

from shared.grpc import (
    ClientSecurity,
    GrpcServer,
    GrpcServerMetrics,
    ServerSecurity,
    ServiceRegistration,
    build_grpc_server,
    create_channel,
)
from shared.security import current_principal
from shared.settings import CommonSettings
from tests.fixtures.pki import LocalCA, TokenIssuer, lay_out_like_a_secret_volume, spiffe_id
from tests.fixtures.secured_grpc import (
    CALLER_TRAILER,
    answering_services,
    call_rpc,
    every_rpc,
    full_name,
)
from tuneline.devtools.waiting import eventually

RPC = {m.name: m for m in every_rpc()}
WATCH = RPC["WatchAlias"]
WAIT_SECONDS = 30.0


class HeldWatch:
    """WatchAlias that tells its caller (initial metadata) who it is, then holds the stream
    open until :meth:`release`, so a test can rotate credentials while it is open."""

    def __init__(self) -> None:
        self.opened = threading.Semaphore(0)
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def registration(self) -> ServiceRegistration:
        response_type = GetMessageClass(WATCH.output_type)

        def watch(_request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            principal = current_principal()
            context.send_initial_metadata(((CALLER_TRAILER, principal.name if principal else ""),))
            self.opened.release()
            self._released.wait(WAIT_SECONDS)
            yield response_type()

        service = WATCH.containing_service.full_name
        handler = grpc.method_handlers_generic_handler(
            service,
            {
                WATCH.name: grpc.unary_stream_rpc_method_handler(
                    watch,
                    request_deserializer=GetMessageClass(WATCH.input_type).FromString,
                    response_serializer=response_type.SerializeToString,
                )
            },
        )
        return ServiceRegistration(
            service, handler, lambda h, server: server.add_generic_rpc_handlers((h,))
        )


@dataclass
class RotatingPki:
    """A server whose trusted client CA, and a client whose certificate, both live in
    Kubernetes-style Secret volumes."""

    server: GrpcServer
    ca: LocalCA
    server_volume: Path
    client_volume: Path
    held: HeldWatch

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def client_security(self) -> ClientSecurity:
        return ClientSecurity(
            tls=True,
            ca_file=self.client_volume / "ca.crt",
            cert_file=self.client_volume / "tls.crt",
            key_file=self.client_volume / "tls.key",
            reload_check_seconds=0,  # look at the files on every call: the test's signal
        )


def _serve(settings: CommonSettings, held: HeldWatch) -> GrpcServer:
    server = build_grpc_server(
        host="127.0.0.1",
        port=0,
        services=[held.registration(), *answering_services()],
        metrics=GrpcServerMetrics(CollectorRegistry()),
        security=ServerSecurity.from_settings(settings),
        grace_seconds=0,
        health_port=0,
    )
    server.start()
    return server


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[RotatingPki]:
    ca = LocalCA(tmp_path / "ca-a", name="client CA A")
    server_cert = ca.issue("server", uri=spiffe_id("service", "registry"), server=True)
    robot_a = ca.issue("robot-a", common_name="robot-a")
    server_volume = tmp_path / "server-tls"
    server_volume.mkdir()
    lay_out_like_a_secret_volume(
        server_volume,
        {"tls.crt": server_cert.cert_file, "tls.key": server_cert.key_file, "ca.crt": ca.ca_file},
        "1",
    )
    client_volume = tmp_path / "client-tls"
    client_volume.mkdir()
    lay_out_like_a_secret_volume(
        client_volume,
        {"tls.crt": robot_a.cert_file, "tls.key": robot_a.key_file, "ca.crt": ca.ca_file},
        "1",
    )
    held = HeldWatch()
    server = _serve(
        CommonSettings(
            auth_mode="enforce",
            tls_cert_file=server_volume / "tls.crt",
            tls_key_file=server_volume / "tls.key",
            tls_client_ca_file=server_volume / "ca.crt",
            auth_policy_file=_policy(tmp_path),
        ),
        held,
    )
    try:
        yield RotatingPki(server, ca, server_volume, client_volume, held)
    finally:
        held.release()
        server.stop(0)


def _policy(folder: Path) -> Path:
    policy = folder / "policy.json"
    robots = ("robot-a", "robot-b", "robot-c")
    policy.write_text(json.dumps({"bindings": {robot: ["viewer"] for robot in robots}}))
    return policy


def _rotate_to_a_new_ca(pki: RotatingPki, tmp_path: Path, version: str) -> str:
    """Renew the client's certificate from a new CA, and make the server trust only that CA
    (both volumes swapped, as cert-manager and the kubelet would): the old certificate is
    refused from now on. The new certificate's identity is returned."""
    ca_b = LocalCA(tmp_path / f"ca-{version}", name=f"client CA {version}")
    identity = "robot-b"
    robot_b = ca_b.issue(identity, common_name=identity)
    lay_out_like_a_secret_volume(
        pki.client_volume,
        {
            "tls.crt": robot_b.cert_file,
            "tls.key": robot_b.key_file,
            "ca.crt": pki.ca.ca_file,  # the server's certificate still comes from CA A
        },
        version,
    )
    server_cert = pki.server_volume / "tls.crt"
    server_key = pki.server_volume / "tls.key"
    lay_out_like_a_secret_volume(
        pki.server_volume,
        {"tls.crt": server_cert, "tls.key": server_key, "ca.crt": ca_b.ca_file},
        version,
    )
    return identity


def test_the_next_call_presents_the_renewed_client_certificate(
    pki: RotatingPki, tmp_path: Path
) -> None:
    with create_channel(pki.target, security=pki.client_security(), max_attempts=1) as channel:
        assert call_rpc(channel, RPC["GetAlias"]) == (grpc.StatusCode.OK, "robot-a")
        stale = ClientSecurity(
            tls=True,
            ca_file=pki.ca.ca_file,
            cert_file=pki.client_volume / "..1" / "tls.crt",
            key_file=pki.client_volume / "..1" / "tls.key",
        )
        renewed = _rotate_to_a_new_ca(pki, tmp_path, "2")
        # the same client object, no restart: the next call hands over the new certificate
        assert call_rpc(channel, RPC["GetAlias"]) == (grpc.StatusCode.OK, renewed)
    # and only the new one would do: the server no longer takes the old certificate
    with create_channel(pki.target, security=stale, max_attempts=1) as old:
        assert call_rpc(old, RPC["GetAlias"])[0] == grpc.StatusCode.UNAVAILABLE


def test_a_half_written_renewal_keeps_the_working_certificate(pki: RotatingPki) -> None:
    """The files caught mid-write (a truncated certificate) are not used; the client goes on
    with the certificate it has, and takes the renewal once it is whole."""
    robot_c = pki.ca.issue("robot-c", common_name="robot-c")
    truncated = pki.client_volume.parent / "truncated.crt"
    truncated.write_bytes(robot_c.cert_file.read_bytes()[:100])
    with create_channel(pki.target, security=pki.client_security(), max_attempts=1) as channel:
        lay_out_like_a_secret_volume(
            pki.client_volume,
            {"tls.crt": truncated, "tls.key": robot_c.key_file, "ca.crt": pki.ca.ca_file},
            "2",
        )
        assert call_rpc(channel, RPC["GetAlias"]) == (grpc.StatusCode.OK, "robot-a")
        lay_out_like_a_secret_volume(
            pki.client_volume,
            {"tls.crt": robot_c.cert_file, "tls.key": robot_c.key_file, "ca.crt": pki.ca.ca_file},
            "3",
        )
        assert call_rpc(channel, RPC["GetAlias"]) == (grpc.StatusCode.OK, "robot-c")


def _watch(channel: grpc.Channel) -> Any:
    return channel.unary_stream(
        f"/{full_name(WATCH)}",
        request_serializer=GetMessageClass(WATCH.input_type).SerializeToString,
        response_deserializer=GetMessageClass(WATCH.output_type).FromString,
    )(GetMessageClass(WATCH.input_type)(), timeout=WAIT_SECONDS)


def _is_closed(channel: grpc.Channel) -> bool:
    try:
        check = channel.unary_unary("/grpc.health.v1.Health/Check", None, None)
        check(b"", timeout=WAIT_SECONDS)
    except ValueError:  # gRPC refuses to start a call on a closed channel
        return True
    except grpc.RpcError:
        pass
    return False


def test_a_watch_open_across_a_renewal_finishes_and_the_next_one_uses_the_new_certificate(
    pki: RotatingPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch holds its connection (and the certificate it was opened with) to its end; the
    old connection is closed once it ends, and the watch opened again after it (what the
    serving fleet's alias watcher does) is on the new one, with the new identity: a rotation
    never breaks a watch for good."""
    built: list[grpc.Channel] = []
    secure_channel = grpc.secure_channel

    def recording(*args: Any, **kwargs: Any) -> grpc.Channel:
        built.append(secure_channel(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(grpc, "secure_channel", recording)
    with create_channel(pki.target, security=pki.client_security(), max_attempts=1) as channel:
        first = _watch(channel)
        assert pki.held.opened.acquire(timeout=WAIT_SECONDS)
        assert dict(first.initial_metadata())[CALLER_TRAILER] == "robot-a"
        renewed = _rotate_to_a_new_ca(pki, tmp_path, "2")
        assert call_rpc(channel, RPC["GetAlias"]) == (grpc.StatusCode.OK, renewed)
        assert len(built) == 2
        assert not _is_closed(built[0]), "the old channel still carries the open watch"
        pki.held.release()
        assert len(list(first)) == 1  # the open watch ended normally, on the old channel
        eventually(lambda: _is_closed(built[0]), timeout=WAIT_SECONDS, what="old channel closed")
        again = _watch(channel)
        assert dict(again.initial_metadata())[CALLER_TRAILER] == renewed
        assert len(list(again)) == 1


def test_a_rotated_token_file_is_sent_by_the_next_call(tmp_path: Path) -> None:
    """A projected service-account token (rotated hourly by the kubelet, same ``..data``
    swap) is read again when it changes."""
    ca = LocalCA(tmp_path / "pki")
    server_cert = ca.issue("server", uri=spiffe_id("service", "registry"), server=True)
    tokens = TokenIssuer(tmp_path / "jwks.json")
    held = HeldWatch()
    server = _serve(
        CommonSettings(
            auth_mode="enforce",
            tls_cert_file=server_cert.cert_file,
            tls_key_file=server_cert.key_file,
            auth_jwt_jwks_file=tokens.jwks_file,
            auth_jwt_issuer=tokens.issuer,
            auth_policy_file=_policy(tmp_path),
        ),
        held,
    )
    volume = tmp_path / "token"
    volume.mkdir()

    def issue(subject: str, version: str) -> None:
        (tmp_path / "issued").write_text(tokens.token(subject, ["viewer"]))
        lay_out_like_a_secret_volume(volume, {"token": tmp_path / "issued"}, version)

    try:
        issue("robot-one", "1")
        security = ClientSecurity(tls=True, ca_file=ca.ca_file, token_file=volume / "token")
        with create_channel(f"127.0.0.1:{server.port}", security=security) as channel:
            assert call_rpc(channel, RPC["GetAlias"]) == (grpc.StatusCode.OK, "robot-one")
            issue("robot-two", "2")
            assert call_rpc(channel, RPC["GetAlias"]) == (grpc.StatusCode.OK, "robot-two")
    finally:
        held.release()
        server.stop(0)
