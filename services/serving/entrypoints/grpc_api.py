"""The gRPC face of the serving service: converts proto to domain, calls a handler.

No logic lives here; domain errors become gRPC statuses in the shared error interceptor.
"""

from __future__ import annotations

import grpc

from services.serving.adapters.protos import (
    label_scores_to_proto,
    refused_to_proto,
    served_to_proto,
)
from services.serving.handlers import feedback, inference
from services.serving.handlers.deps import ServingDeps
from tuneline.serving.v1 import service_pb2, service_pb2_grpc


class ServingServicer(service_pb2_grpc.ServingServiceServicer):
    """``tuneline.serving.v1.ServingService``."""

    def __init__(self, deps: ServingDeps) -> None:
        self._deps = deps

    def Predict(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> service_pb2.PredictResponse:
        prediction, scores, served = inference.predict(self._deps, request.model, request.text)
        return service_pb2.PredictResponse(
            prediction_id=prediction.prediction_id,
            label=prediction.label,
            scores=label_scores_to_proto(prediction.labels, scores),
            checkpoint=served.release.checkpoint,
            alias_revision=served.release.revision,
        )

    def Generate(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> service_pb2.GenerateResponse:
        prediction, generation, served = inference.generate(
            self._deps, request.model, request.prompt, request.max_new_tokens
        )
        return service_pb2.GenerateResponse(
            prediction_id=prediction.prediction_id,
            text=generation.text,
            token_count=generation.token_count,
            finish_reason=(
                service_pb2.FINISH_REASON_END_OF_TURN
                if generation.ended_turn
                else service_pb2.FINISH_REASON_LENGTH
            ),
            checkpoint=served.release.checkpoint,
            alias_revision=served.release.revision,
        )

    def SubmitFeedback(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.SubmitFeedbackRequest, context: grpc.ServicerContext
    ) -> service_pb2.SubmitFeedbackResponse:
        outcome = request.WhichOneof("outcome")
        prediction, counted = feedback.submit_feedback(
            self._deps,
            request.prediction_id,
            label=request.label if outcome == "label" else None,
            score=request.score if outcome == "score" else None,
        )
        return service_pb2.SubmitFeedbackResponse(
            prediction_id=prediction.prediction_id,
            checkpoint=prediction.checkpoint,
            success=bool(prediction.success),
            counted=counted,
        )

    def GetServingState(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetServingStateRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetServingStateResponse:
        table = self._deps.table
        return service_pb2.GetServingStateResponse(
            served_models=[served_to_proto(s) for s in table.served()],
            followed_models=table.followed(),
            refused_releases=[refused_to_proto(r) for r in table.refusals()],
        )
