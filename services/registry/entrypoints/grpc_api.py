"""The gRPC face of the registry service: converts proto to domain, calls a handler.

No logic lives here. RPCs not implemented yet answer UNIMPLEMENTED through the generated base.
"""

from __future__ import annotations

from tuneline.registry.v1 import service_pb2_grpc


class RegistryServicer(service_pb2_grpc.RegistryServiceServicer):
    """``tuneline.registry.v1.RegistryService``."""
