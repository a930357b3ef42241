"""The gRPC face of the evaluator service: converts proto to domain, calls a handler.

No logic lives here. Each call runs its handler in one transaction; a new evaluation wakes the
supervisor after the commit.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from services.evaluator.adapters import protos
from services.evaluator.domain.gate import Verdict
from services.evaluator.handlers.deps import EvaluatorDeps
from services.evaluator.handlers.evaluations import (
    evaluate_checkpoint,
    get_evaluation,
    list_evaluations,
)
from services.evaluator.handlers.policies import get_evaluation_policy, set_evaluation_policy
from shared.db import read_snapshot, run_in_transaction
from shared.errors import FieldViolation, InvalidArgument
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.evaluator.v1 import resources_pb2, service_pb2, service_pb2_grpc


def _verdict_filter(number: int) -> Verdict | None:
    if number not in common_pb2.EvaluationVerdict.values():
        raise InvalidArgument(
            "unknown verdict",
            [FieldViolation("verdict", f"{number} is not an EvaluationVerdict", "UNKNOWN_ENUM")],
        )
    return protos.verdict_from_proto(number)


class EvaluatorServicer(service_pb2_grpc.EvaluatorServiceServicer):
    """``tuneline.evaluator.v1.EvaluatorService``."""

    def __init__(
        self, deps: EvaluatorDeps, *, on_queued: Callable[[], None] = lambda: None
    ) -> None:
        self._deps = deps
        #: Wakes the supervisor once a new evaluation is committed.
        self._on_queued = on_queued

    def EvaluateCheckpoint(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.EvaluateCheckpointRequest, context: grpc.ServicerContext
    ) -> service_pb2.EvaluateCheckpointResponse:
        evaluation, created = run_in_transaction(
            self._deps.sessions,
            lambda s: evaluate_checkpoint(
                s,
                self._deps,
                checkpoint=request.checkpoint,
                model=request.model,
                baseline_checkpoint=request.baseline_checkpoint,
                force=request.force,
                request_id=request.request_id,
            ),
        )
        if created:
            self._on_queued()
        return service_pb2.EvaluateCheckpointResponse(
            evaluation=protos.evaluation_to_proto(evaluation), created=created
        )

    def GetEvaluation(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetEvaluationRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetEvaluationResponse:
        with read_snapshot(self._deps.sessions) as session:
            evaluation = get_evaluation(session, request.name)
        return service_pb2.GetEvaluationResponse(evaluation=protos.evaluation_to_proto(evaluation))

    def ListEvaluations(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.ListEvaluationsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListEvaluationsResponse:
        verdict = _verdict_filter(request.verdict)
        with read_snapshot(self._deps.sessions) as session:
            evaluations, token = list_evaluations(
                session,
                page_size=request.page_size,
                page_token=request.page_token,
                model=request.model,
                checkpoint=request.checkpoint,
                verdict=verdict,
            )
        return service_pb2.ListEvaluationsResponse(
            evaluations=[protos.evaluation_to_proto(e) for e in evaluations],
            next_page_token=token,
        )

    def SetEvaluationPolicy(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.SetEvaluationPolicyRequest, context: grpc.ServicerContext
    ) -> service_pb2.SetEvaluationPolicyResponse:
        policy = request.evaluation_policy
        if policy.checkpoint_selection not in resources_pb2.CheckpointSelection.values():
            raise InvalidArgument(
                "unknown checkpoint selection",
                [
                    FieldViolation(
                        "evaluation_policy.checkpoint_selection",
                        f"{policy.checkpoint_selection} is not a CheckpointSelection",
                        "UNKNOWN_ENUM",
                    )
                ],
            )
        stored = run_in_transaction(
            self._deps.sessions,
            lambda s: set_evaluation_policy(
                s,
                self._deps,
                name=policy.name,
                checkpoint_selection=protos.selection_from_proto(policy.checkpoint_selection),
                max_generation_examples=policy.max_generation_examples,
                max_new_tokens=policy.max_new_tokens,
                batch_size=policy.batch_size,
                request_id=request.request_id,
            ),
        )
        return service_pb2.SetEvaluationPolicyResponse(
            evaluation_policy=protos.policy_to_proto(stored)
        )

    def GetEvaluationPolicy(  # noqa: N802 - the generated servicer's method name
        self, request: service_pb2.GetEvaluationPolicyRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetEvaluationPolicyResponse:
        with read_snapshot(self._deps.sessions) as session:
            policy = get_evaluation_policy(session, self._deps, request.name)
        return service_pb2.GetEvaluationPolicyResponse(
            evaluation_policy=protos.policy_to_proto(policy)
        )
