"""Wiring of the splitter service: what makes it this service on the shared runtime."""

from __future__ import annotations

from collections.abc import Sequence

from services.splitter.adapters.datasets import DatasetLookup
from services.splitter.adapters.tables import SplitterBase
from services.splitter.entrypoints import events
from services.splitter.entrypoints.grpc_api import SplitterServicer
from services.splitter.metrics import SplitterMetrics
from services.splitter.settings import SplitterSettings
from shared.events import Subscription
from shared.grpc import ServiceRegistration
from shared.runtime import ServiceContext, ServiceSpec, service_settings
from tuneline.splitter.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["SplitterService"].full_name


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    settings = service_settings(context, SplitterSettings)
    return [
        ServiceRegistration(
            SERVICE_NAME,
            SplitterServicer(
                context.sessions,
                context.artifacts,
                SplitterMetrics.of(context.registry),
                source=context.source,
                versions=DatasetLookup(
                    settings.dataset_target, timeout=settings.dataset_timeout_seconds
                ),
            ),
            service_pb2_grpc.add_SplitterServiceServicer_to_server,
        )
    ]


def subscriptions(context: ServiceContext) -> Sequence[Subscription]:
    return events.subscriptions(
        context.artifacts, SplitterMetrics.of(context.registry), source=context.source
    )


SPEC = ServiceSpec(
    name="splitter",
    tables=[SplitterBase.metadata],
    publishes=[events_pb2.SplitCreated],
    grpc_services=grpc_services,
    subscriptions=subscriptions,
)
