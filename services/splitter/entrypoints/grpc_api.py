"""The gRPC face of the splitter service: converts proto to domain, calls a handler.

No logic lives here. RPCs not implemented yet answer UNIMPLEMENTED through the generated base.
"""

from __future__ import annotations

from tuneline.splitter.v1 import service_pb2_grpc


class SplitterServicer(service_pb2_grpc.SplitterServiceServicer):
    """``tuneline.splitter.v1.SplitterService``."""
