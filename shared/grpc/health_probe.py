"""``python -m shared.grpc.health_probe HOST:PORT``: exit 0 when a server reports SERVING.

The container images' ``HEALTHCHECK`` (and anything else without ``grpc_health_probe``) runs
this: one ``grpc.health.v1.Health/Check`` call with a deadline, no retries. It prints the status
it got and exits 0 for SERVING, 1 for any other status or an RPC error, and 2 for bad
arguments, the way ``grpc_health_probe`` does, so Docker and compose can tell a server that is
draining (NOT_SERVING after SIGTERM) from one that is up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.grpc.client import create_channel

SERVING_EXIT = 0
UNHEALTHY_EXIT = 1


def check(target: str, *, service: str = "", timeout: float = 3.0) -> str:
    """The health status name ``target`` reports for ``service`` ("" = the whole server).

    Raises ``grpc.RpcError`` when the call fails (nothing listening, deadline, unknown service).
    Speaks TLS, with the process' own certificate, when the ``TUNELINE_TLS_*`` settings say so.
    """
    with create_channel(target, max_attempts=1, default_timeout=timeout) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one check and return the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m shared.grpc.health_probe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("target", help="HOST:PORT of the gRPC server")
    parser.add_argument("--service", default="", help="service name to check (default: server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="deadline in seconds")
    args = parser.parse_args(argv)
    try:
        status = check(args.target, service=args.service, timeout=args.timeout)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        name = code.name if code is not None else "UNKNOWN"
        print(f"{args.target}: health check failed: {name}", file=sys.stderr)
        return UNHEALTHY_EXIT
    print(f"{args.target}: {status}")
    return SERVING_EXIT if status == "SERVING" else UNHEALTHY_EXIT


if __name__ == "__main__":
    sys.exit(main())
