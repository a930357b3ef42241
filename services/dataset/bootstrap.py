"""Wiring of the dataset service: what makes it this service on the shared runtime.

One :class:`~services.dataset.handlers.DatasetDeps` per service instance is shared by the gRPC
servicer and the validation worker pool's life cycle; it is kept on the context, because the
runtime calls ``grpc_services`` and ``background`` separately with the same context.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.dataset.adapters.sources import ImportSources
from services.dataset.adapters.tables import DatasetBase
from services.dataset.adapters.workers import ValidationWorkers
from services.dataset.entrypoints.grpc_api import DatasetServicer
from services.dataset.handlers import DatasetDeps, IngestLimits
from services.dataset.metrics import DatasetMetrics
from services.dataset.settings import DatasetSettings
from shared.grpc import ServiceRegistration
from shared.runtime import BackgroundComponent, ServiceContext, ServiceSpec
from tuneline.dataset.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name

_DEPS_KEY = "_dataset_deps"


def dataset_deps(context: ServiceContext) -> DatasetDeps:
    """The instance's dependencies, built once per context."""
    existing = getattr(context, _DEPS_KEY, None)
    if isinstance(existing, DatasetDeps):
        return existing
    settings = context.settings
    if not isinstance(settings, DatasetSettings):  # a plain ServiceSettings in some tests
        settings = DatasetSettings()
    deps = DatasetDeps(
        sessions=context.sessions,
        store=context.artifacts,
        metrics=DatasetMetrics(context.registry),
        limits=IngestLimits(
            max_upload_bytes=settings.max_upload_bytes,
            max_line_bytes=settings.max_line_bytes,
            report_line_numbers=settings.report_line_numbers,
            value_bounds=settings.value_bounds(),
            near_duplicate_threshold=settings.near_duplicate_threshold,
            near_duplicate_max_rows=settings.near_duplicate_max_rows,
        ),
        workers=ValidationWorkers(settings.validation_workers),
        import_sources=ImportSources([*settings.import_roots, context.common.data_dir]),
        event_source=context.source,
        relay_wake=context.relay.wake,
    )
    setattr(context, _DEPS_KEY, deps)
    return deps


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    return [
        ServiceRegistration(
            SERVICE_NAME,
            DatasetServicer(dataset_deps(context)),
            service_pb2_grpc.add_DatasetServiceServicer_to_server,
        )
    ]


def background(context: ServiceContext) -> Sequence[BackgroundComponent]:
    """The validation worker pool: stopped with the service."""
    return [dataset_deps(context).workers]


SPEC = ServiceSpec(
    name="dataset",
    tables=[DatasetBase.metadata],
    publishes=[events_pb2.DatasetVersioned],
    grpc_services=grpc_services,
    background=background,
)
