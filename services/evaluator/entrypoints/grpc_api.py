"""The gRPC face of the evaluator service: converts proto to domain, calls a handler.

No logic lives here. RPCs not implemented yet answer UNIMPLEMENTED through the generated base.
"""

from __future__ import annotations

from tuneline.evaluator.v1 import service_pb2_grpc


class EvaluatorServicer(service_pb2_grpc.EvaluatorServiceServicer):
    """``tuneline.evaluator.v1.EvaluatorService``."""
