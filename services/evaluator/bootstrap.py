"""Wiring of the evaluator service: what makes it this service on the shared runtime."""

from __future__ import annotations

from collections.abc import Sequence

from services.evaluator.entrypoints.grpc_api import EvaluatorServicer
from shared.grpc import ServiceRegistration
from shared.runtime import ServiceContext, ServiceSpec
from tuneline.evaluator.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    return [
        ServiceRegistration(
            SERVICE_NAME,
            EvaluatorServicer(),  # type: ignore[abstract]  # RPCs not implemented yet: UNIMPLEMENTED
            service_pb2_grpc.add_EvaluatorServiceServicer_to_server,
        )
    ]


SPEC = ServiceSpec(
    name="evaluator",
    tables=[],
    publishes=[events_pb2.EvaluationCompleted, events_pb2.RegressionDetected],
    grpc_services=grpc_services,
)
