"""The gRPC face of the trainer service: converts proto to domain, calls a handler.

No logic lives here. RPCs not implemented yet answer UNIMPLEMENTED through the generated base.
"""

from __future__ import annotations

from tuneline.trainer.v1 import service_pb2_grpc


class TrainerServicer(service_pb2_grpc.TrainerServiceServicer):
    """``tuneline.trainer.v1.TrainerService``."""
