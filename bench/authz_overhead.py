"""What mutual TLS plus a bearer JWT add to a unary RPC, against plaintext, in the same run.

Two real gRPC servers on loopback, built by ``shared.grpc.build_grpc_server`` exactly as the
services build theirs, serve ``RegistryService/GetAlias`` from a handler that answers at once
(so the numbers are the transport and the interceptors, not a database):

* **plaintext**: ``AUTH_MODE=insecure`` — no TLS, no auth interceptor;
* **secured**: ``AUTH_MODE=enforce`` — mutual TLS (a throw-away CA), a bearer ES256 JWT
  verified against a JWKS file on every call, the role table's decision, the caller set for
  the handler;
* **tls-only**: the same mutual TLS without the auth interceptor or token, to split the added
  cost between the transport and the checks.

Clients are ``shared.grpc.create_channel`` channels (deadline interceptor, retries, and for the
secured one the bearer-token interceptor). Each side warms up first (the TLS handshake and the
first token verification are excluded: the goal is the per-call cost on an open connection),
then both are timed in alternating blocks so background load hits them alike. Printed: p50,
p99 and mean per call of each, the added latency and the ratio (goal: < 0.2 ms added at p50).

    .venv/bin/python bench/authz_overhead.py [--calls 5000] [--block 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
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
from shared.settings import CommonSettings
from tests.fixtures.pki import LocalCA, TokenIssuer, spiffe_id
from tuneline.registry.v1 import service_pb2

SERVICE = "tuneline.registry.v1.RegistryService"
METHOD = f"/{SERVICE}/GetAlias"


def _serve(security: ServerSecurity) -> GrpcServer:
    def get_alias(_request: object, _context: grpc.ServicerContext) -> object:
        return service_pb2.GetAliasResponse()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "GetAlias": grpc.unary_unary_rpc_method_handler(
                get_alias,
                request_deserializer=service_pb2.GetAliasRequest.FromString,
                response_serializer=service_pb2.GetAliasResponse.SerializeToString,
            )
        },
    )
    server = build_grpc_server(
        host="127.0.0.1",
        port=0,
        services=[
            ServiceRegistration(SERVICE, handler, lambda h, s: s.add_generic_rpc_handlers((h,)))
        ],
        metrics=GrpcServerMetrics(CollectorRegistry()),
        security=security,
        grace_seconds=0,
    )
    server.start()
    return server


def _timed(call: grpc.UnaryUnaryMultiCallable, count: int, into: list[float]) -> None:
    request = service_pb2.GetAliasRequest(name="models/m/aliases/production")
    for _ in range(count):
        started = time.perf_counter()
        call(request, timeout=5)
        into.append(time.perf_counter() - started)


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": ordered[len(ordered) // 2] * 1e3,
        "p99": ordered[int(len(ordered) * 0.99)] * 1e3,
        "mean": statistics.fmean(ordered) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="timed calls per side")
    parser.add_argument("--block", type=int, default=100, help="calls per alternating block")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        ca = LocalCA(root / "pki")
        server_cert = ca.issue("server", uri=spiffe_id("service", "registry"), server=True)
        client_cert = ca.issue("client", uri=spiffe_id("user", "bench"))
        tokens = TokenIssuer(root / "jwks.json")
        secured_settings = CommonSettings(
            auth_mode="enforce",
            tls_cert_file=server_cert.cert_file,
            tls_key_file=server_cert.key_file,
            tls_client_ca_file=ca.ca_file,
            auth_jwt_jwks_file=tokens.jwks_file,
            auth_jwt_issuer=tokens.issuer,
        )
        plain = _serve(ServerSecurity.insecure())
        secured = _serve(ServerSecurity.from_settings(secured_settings))
        # credentials cannot be shared by two servers: build the same ones again
        tls_only = _serve(
            ServerSecurity(ServerSecurity.from_settings(secured_settings).credentials, None)
        )
        client_security = ClientSecurity(
            tls=True,
            ca_file=ca.ca_file,
            cert_file=client_cert.cert_file,
            key_file=client_cert.key_file,
            token=tokens.token("bench-user", ["viewer"]),
        )
        channels = {
            "plaintext": create_channel(f"127.0.0.1:{plain.port}", security=ClientSecurity()),
            "secured": create_channel(f"127.0.0.1:{secured.port}", security=client_security),
            "tls-only": create_channel(
                f"127.0.0.1:{tls_only.port}",
                security=ClientSecurity(
                    tls=True,
                    ca_file=ca.ca_file,
                    cert_file=client_cert.cert_file,
                    key_file=client_cert.key_file,
                ),
            ),
        }
        calls = {
            name: channel.unary_unary(
                METHOD,
                request_serializer=service_pb2.GetAliasRequest.SerializeToString,
                response_deserializer=service_pb2.GetAliasResponse.FromString,
            )
            for name, channel in channels.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():  # handshake, token check, code paths warm
            _timed(call, 500, [])
        done = 0
        while done < args.calls:
            block = min(args.block, args.calls - done)
            for name, call in calls.items():
                _timed(call, block, samples[name])
            done += block
        for channel in channels.values():
            channel.close()
        for server in (plain, secured, tls_only):
            server.stop(0)

    results = {name: _summary(values) for name, values in samples.items()}
    print(f"unary GetAlias over loopback, {args.calls} calls per side after warm-up (ms)")
    for name, figures in results.items():
        print(
            f"  {name:<10} p50 {figures['p50']:.3f}  p99 {figures['p99']:.3f}"
            f"  mean {figures['mean']:.3f}"
        )
    for stat in ("p50", "p99"):
        added = results["secured"][stat] - results["plaintext"][stat]
        ratio = results["secured"][stat] / results["plaintext"][stat]
        checks = results["secured"][stat] - results["tls-only"][stat]
        print(
            f"  added at {stat}: {added:+.3f} ms (x{ratio:.2f}),"
            f" of which the auth checks {checks:+.3f} ms"
        )
    added_p50 = results["secured"]["p50"] - results["plaintext"]["p50"]
    print(f"  goal < 0.2 ms added at p50: {'met' if added_p50 < 0.2 else 'NOT met'}")


if __name__ == "__main__":
    main()
