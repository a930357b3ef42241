"""Typed client of the serving service (``tuneline.serving.v1.ServingService``)."""

from __future__ import annotations

from typing import Any

from shared.service_ports import default_target
from tuneline.client.base import DeprecatedAlias, ServiceClient
from tuneline.serving.v1 import service_pb2, service_pb2_grpc

#: Where the serving listens by default.
DEFAULT_TARGET = default_target("serving")


class ServingClient(ServiceClient):
    """Predictions from each model's production checkpoint, and feedback on them.

    >>> with ServingClient("127.0.0.1:50056") as serving:
    ...     answer = serving.predict("models/sentiment", "a gripping, funny film")
    ...     serving.submit_feedback(answer.prediction_id, label="fresh")
    """

    service = service_pb2.DESCRIPTOR.services_by_name["ServingService"]

    def __init__(self, target: str | None = None, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = service_pb2_grpc.ServingServiceStub(self.channel)

    def predict(
        self, model: str, text: str, *, timeout: float | None = None
    ) -> service_pb2.PredictResponse:
        """Classify ``text`` with the production checkpoint of ``model`` (``models/{m}``)."""
        request = service_pb2.PredictRequest(model=model, text=text)
        return self._call(self._stub.Predict, request, timeout=timeout)

    def generate(
        self, model: str, prompt: str, *, max_new_tokens: int = 0, timeout: float | None = None
    ) -> service_pb2.GenerateResponse:
        """Complete ``prompt`` greedily with the production checkpoint of a causal LM
        (``models/{m}``)."""
        request = service_pb2.GenerateRequest(
            model=model, prompt=prompt, max_new_tokens=max_new_tokens
        )
        return self._call(self._stub.Generate, request, timeout=timeout)

    def submit_feedback(
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

    def get_serving_state(self) -> service_pb2.GetServingStateResponse:
        """What the instance serves now, what it follows, what it refused."""
        return self._call(self._stub.GetServingState, service_pb2.GetServingStateRequest())

    # -- names of an earlier SDK ----------------------------------------------------------

    feedback = DeprecatedAlias("submit_feedback")
    state = DeprecatedAlias("get_serving_state")
