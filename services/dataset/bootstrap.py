"""Wiring of the dataset service: what makes it this service on the shared runtime."""

from __future__ import annotations

from collections.abc import Sequence

from services.dataset.entrypoints.grpc_api import DatasetServicer
from shared.grpc import ServiceRegistration
from shared.runtime import ServiceContext, ServiceSpec
from tuneline.dataset.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    return [
        ServiceRegistration(
            SERVICE_NAME,
            DatasetServicer(),  # type: ignore[abstract]  # RPCs not implemented yet: UNIMPLEMENTED
            service_pb2_grpc.add_DatasetServiceServicer_to_server,
        )
    ]


SPEC = ServiceSpec(
    name="dataset",
    tables=[],
    publishes=[events_pb2.DatasetVersioned],
    grpc_services=grpc_services,
)
