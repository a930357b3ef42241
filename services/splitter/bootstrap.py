"""Wiring of the splitter service: what makes it this service on the shared runtime.

:func:`wire` builds one :class:`~services.splitter.handlers.SplitterDeps` per service instance,
shared by the gRPC servicer and the DatasetVersioned subscription (one set of metrics).
"""

from __future__ import annotations

from services.splitter.adapters.datasets import DatasetLookup
from services.splitter.adapters.metrics import SplitterMetrics
from services.splitter.adapters.tables import SplitterBase
from services.splitter.entrypoints import events
from services.splitter.entrypoints.grpc_api import SplitterServicer
from services.splitter.handlers import SplitterDeps
from services.splitter.settings import SplitterSettings
from shared.grpc import ServiceRegistration
from shared.runtime import ServiceContext, ServiceParts, ServiceSpec
from tuneline.splitter.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["SplitterService"].full_name


def wire(context: ServiceContext[SplitterSettings]) -> ServiceParts:
    """The servicer and the DatasetVersioned subscription. Connects to nothing yet."""
    settings = context.settings
    deps = SplitterDeps(
        sessions=context.sessions,
        artifacts=context.artifacts,
        metrics=SplitterMetrics(context.registry),
        source=context.source,
        versions=DatasetLookup(settings.dataset_target, timeout=settings.dataset_timeout_seconds),
    )
    return ServiceParts(
        grpc_services=[
            ServiceRegistration(
                SERVICE_NAME,
                SplitterServicer(deps),
                service_pb2_grpc.add_SplitterServiceServicer_to_server,
            )
        ],
        subscriptions=events.subscriptions(deps),
    )


SPEC = ServiceSpec(
    name="splitter",
    tables=[SplitterBase.metadata],
    publishes=[events_pb2.SplitCreated],
    wire=wire,
)
