"""Wiring of the registry service: what makes it this service on the shared runtime."""

from __future__ import annotations

from collections.abc import Sequence

from services.registry.entrypoints.grpc_api import RegistryServicer
from shared.grpc import ServiceRegistration
from shared.runtime import ServiceContext, ServiceSpec
from tuneline.registry.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    return [
        ServiceRegistration(
            SERVICE_NAME,
            RegistryServicer(),  # type: ignore[abstract]  # RPCs not implemented yet: UNIMPLEMENTED
            service_pb2_grpc.add_RegistryServiceServicer_to_server,
        )
    ]


SPEC = ServiceSpec(
    name="registry",
    tables=[],
    publishes=[events_pb2.ModelPromoted, events_pb2.ModelRolledBack],
    grpc_services=grpc_services,
)
