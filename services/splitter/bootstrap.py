"""Wiring of the splitter service: what makes it this service on the shared runtime."""

from __future__ import annotations

from collections.abc import Sequence

from services.splitter.entrypoints.grpc_api import SplitterServicer
from shared.grpc import ServiceRegistration
from shared.runtime import ServiceContext, ServiceSpec
from tuneline.splitter.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["SplitterService"].full_name


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    return [
        ServiceRegistration(
            SERVICE_NAME,
            SplitterServicer(),  # type: ignore[abstract]  # RPCs not implemented yet: UNIMPLEMENTED
            service_pb2_grpc.add_SplitterServiceServicer_to_server,
        )
    ]


SPEC = ServiceSpec(
    name="splitter",
    tables=[],
    publishes=[events_pb2.SplitCreated],
    grpc_services=grpc_services,
)
