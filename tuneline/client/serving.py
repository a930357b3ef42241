"""Typed client of the serving service (``tuneline.serving.v1.ServingService``)."""

from __future__ import annotations

from typing import Any

from tuneline.client.base import ServiceClient
from tuneline.client.registry import model_name
from tuneline.serving.v1 import service_pb2, service_pb2_grpc

#: The serving service's default address (gRPC 50056).
DEFAULT_TARGET = "127.0.0.1:50056"


class ServingClient(ServiceClient):
    """Predictions from each model's production checkpoint, and feedback on them.

    >>> with ServingClient("127.0.0.1:50056") as serving:
    ...     answer = serving.predict("sentiment", "a gripping, funny film")
    ...     serving.feedback(answer.prediction_id, label="fresh")
    """

    service = service_pb2.DESCRIPTOR.services_by_name["ServingService"]

    def __init__(self, target: str | None = None, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = service_pb2_grpc.ServingServiceStub(self.channel)

    def predict(
        self, model: str, text: str, *, timeout: float | None = None
    ) -> service_pb2.PredictResponse:
        """Classify ``text`` with ``model``'s (id or ``models/{m}``) production checkpoint."""
        request = service_pb2.PredictRequest(model=model_name(model), text=text)
        return self._call(self._stub.Predict, request, timeout=timeout)

    def generate(
        self, model: str, prompt: str, *, max_new_tokens: int = 0, timeout: float | None = None
    ) -> service_pb2.GenerateResponse:
        """Complete ``prompt`` greedily with a causal LM's production checkpoint."""
        request = service_pb2.GenerateRequest(
            model=model_name(model), prompt=prompt, max_new_tokens=max_new_tokens
        )
        return self._call(self._stub.Generate, request, timeout=timeout)

    def feedback(
        self, prediction_id: str, *, label: str | None = None, score: float | None = None
    ) -> service_pb2.SubmitFeedbackResponse:
        """The true ``label`` (classification) or a ``score`` in [0, 1] for a prediction."""
        if (label is None) == (score is None):
            raise ValueError("pass exactly one of label or score")
        request = service_pb2.SubmitFeedbackRequest(prediction_id=prediction_id)
        if label is not None:
            request.label = label
        else:
            request.score = float(score)  # type: ignore[arg-type]
        return self._call(self._stub.SubmitFeedback, request)

    def state(self) -> service_pb2.GetServingStateResponse:
        """What the instance serves now, what it follows, what it refused."""
        return self._call(self._stub.GetServingState, service_pb2.GetServingStateRequest())
