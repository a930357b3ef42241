"""The gRPC face of the dataset service: converts proto to domain, calls a handler.

No logic lives here. RPCs not implemented yet answer UNIMPLEMENTED through the generated base.
"""

from __future__ import annotations

from tuneline.dataset.v1 import service_pb2_grpc


class DatasetServicer(service_pb2_grpc.DatasetServiceServicer):
    """``tuneline.dataset.v1.DatasetService``."""
