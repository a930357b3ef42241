"""Typed client of the evaluator service (``tuneline.evaluator.v1.EvaluatorService``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shared.names import EVALUATION_POLICY, MODEL
from shared.service_ports import default_target
from tuneline.client.base import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_POLL_SECONDS,
    DEFAULT_WAIT_TIMEOUT,
    ServiceClient,
)
from tuneline.client.names import id_of
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.evaluator.v1 import resources_pb2, service_pb2, service_pb2_grpc

#: Where the evaluator listens by default.
DEFAULT_TARGET = default_target("evaluator")

_TERMINAL = (resources_pb2.EVALUATION_STATE_SUCCEEDED, resources_pb2.EVALUATION_STATE_FAILED)


class EvaluatorClient(ServiceClient):
    """Evaluate checkpoints, read evaluations, and set how a model's checkpoints are evaluated.

    >>> with EvaluatorClient("127.0.0.1:50054") as evaluator:
    ...     evaluation, _ = evaluator.evaluate_checkpoint("trainingJobs/j/checkpoints/step-40")
    ...     evaluation = evaluator.wait(evaluation.name)
    """

    service = service_pb2.DESCRIPTOR.services_by_name["EvaluatorService"]

    def __init__(self, target: str | None = None, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = service_pb2_grpc.EvaluatorServiceStub(self.channel)

    def evaluate_checkpoint(
        self,
        checkpoint: str,
        *,
        model: str = "",
        baseline_checkpoint: str = "",
        force: bool = False,
        request_id: str = "",
    ) -> tuple[resources_pb2.Evaluation, bool]:
        """Queue an evaluation of ``checkpoint`` (``trainingJobs/{j}/checkpoints/{c}``); returns
        it and whether this call created it (False: an equal one existed)."""
        request = service_pb2.EvaluateCheckpointRequest(
            checkpoint=checkpoint,
            model=model,
            baseline_checkpoint=baseline_checkpoint,
            force=force,
            request_id=request_id,
        )
        response = self._call(self._stub.EvaluateCheckpoint, request)
        return response.evaluation, response.created

    def get_evaluation(self, name: str) -> resources_pb2.Evaluation:
        """The evaluation ``evaluations/{e}``."""
        request = service_pb2.GetEvaluationRequest(name=name)
        return self._call(self._stub.GetEvaluation, request).evaluation

    def list_evaluations(
        self,
        *,
        model: str = "",
        checkpoint: str = "",
        verdict: common_pb2.EvaluationVerdict.ValueType = common_pb2.EVALUATION_VERDICT_UNSPECIFIED,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[resources_pb2.Evaluation]:
        """Every matching evaluation, newest first, fetched page by page."""
        request = service_pb2.ListEvaluationsRequest(
            model=model, checkpoint=checkpoint, verdict=verdict
        )
        return self._paginate(
            self._stub.ListEvaluations, request, "evaluations", page_size=page_size
        )

    def wait(
        self,
        name: str,
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> resources_pb2.Evaluation:
        """Poll ``name`` until it is SUCCEEDED or FAILED; ``TimeoutError`` after ``timeout``."""
        return self._wait_until_terminal(
            self.get_evaluation, name, _TERMINAL, timeout=timeout, poll_seconds=poll_seconds
        )

    def set_evaluation_policy(
        self, policy: resources_pb2.EvaluationPolicy, *, request_id: str = ""
    ) -> resources_pb2.EvaluationPolicy:
        """Create or replace a model's policy (``policy.name``: ``models/{m}/evaluationPolicy``).
        A retry with the same ``request_id`` (one is generated when empty) changes nothing
        twice."""
        request = service_pb2.SetEvaluationPolicyRequest(
            evaluation_policy=policy, request_id=request_id
        )
        return self._call(self._stub.SetEvaluationPolicy, request).evaluation_policy

    def get_evaluation_policy(self, model: str) -> resources_pb2.EvaluationPolicy:
        """The policy of ``models/{m}`` (or its full policy name), defaults resolved."""
        name = (
            model
            if EVALUATION_POLICY.matches(model)
            else EVALUATION_POLICY.format(model=id_of(MODEL, model))
        )
        request = service_pb2.GetEvaluationPolicyRequest(name=name)
        return self._call(self._stub.GetEvaluationPolicy, request).evaluation_policy
