"""Wiring of the trainer service: what makes it this service on the shared runtime."""

from __future__ import annotations

from collections.abc import Sequence

from services.trainer.entrypoints.grpc_api import TrainerServicer
from shared.grpc import ServiceRegistration
from shared.runtime import ServiceContext, ServiceSpec
from tuneline.trainer.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    return [
        ServiceRegistration(
            SERVICE_NAME,
            TrainerServicer(),  # type: ignore[abstract]  # RPCs not implemented yet: UNIMPLEMENTED
            service_pb2_grpc.add_TrainerServiceServicer_to_server,
        )
    ]


SPEC = ServiceSpec(
    name="trainer",
    tables=[],
    publishes=[
        events_pb2.TrainingJobStarted,
        events_pb2.CheckpointReady,
        events_pb2.TrainingJobCompleted,
        events_pb2.TrainingJobFailed,
    ],
    grpc_services=grpc_services,
)
