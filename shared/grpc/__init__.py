"""gRPC plumbing: the server builder, the client channel, and the one error mapping."""

from shared.grpc.client import create_channel
from shared.grpc.errors import to_rpc_status
from shared.grpc.server import GrpcServer, GrpcServerMetrics, ServiceRegistration, build_grpc_server

__all__ = [
    "GrpcServer",
    "GrpcServerMetrics",
    "ServiceRegistration",
    "build_grpc_server",
    "create_channel",
    "to_rpc_status",
]
