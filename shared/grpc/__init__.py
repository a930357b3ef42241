"""gRPC plumbing: the server builder, the client channel, and the one error mapping."""

from shared.grpc.auth import ServerSecurity
from shared.grpc.client import ClientSecurity, create_channel
from shared.grpc.errors import to_rpc_status
from shared.grpc.server import GrpcServer, GrpcServerMetrics, ServiceRegistration, build_grpc_server

__all__ = [
    "ClientSecurity",
    "GrpcServer",
    "GrpcServerMetrics",
    "ServerSecurity",
    "ServiceRegistration",
    "build_grpc_server",
    "create_channel",
    "to_rpc_status",
]
