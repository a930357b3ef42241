"""Wiring of the dataset service: what makes it this service on the shared runtime.

:func:`wire` builds one :class:`~services.dataset.handlers.DatasetDeps` per service instance,
shared by the gRPC servicer, the validation worker pool and the label-audit loop.
"""

from __future__ import annotations

from dataclasses import replace

from services.dataset.adapters.label_auditor import AuditorSettings, ProcessLabelAuditor
from services.dataset.adapters.metrics import DatasetMetrics
from services.dataset.adapters.sources import ImportSources
from services.dataset.adapters.tables import DatasetBase
from services.dataset.adapters.workers import ValidationWorkers
from services.dataset.entrypoints.audit_runner import AuditRunner
from services.dataset.entrypoints.grpc_api import DatasetServicer
from services.dataset.handlers.deps import DatasetDeps, IngestLimits
from services.dataset.settings import DatasetSettings
from shared.grpc import ServiceRegistration
from shared.runtime import BackgroundComponent, ServiceContext, ServiceParts, ServiceSpec
from tuneline.dataset.v1 import events_pb2, service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name


def wire(context: ServiceContext[DatasetSettings]) -> ServiceParts:
    """The servicer, the validation worker pool and (when enabled) the label-audit loop, on
    one set of dependencies. Connects to nothing yet."""
    settings = context.settings
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
        # the data dir holds every service's database and artifacts: never an import root
        # unless configured
        import_sources=ImportSources(settings.import_roots),
        event_source=context.source,
        relay_wake=context.relay.wake,
        parent_shift=settings.parent_shift_policy(),
    )
    background: list[BackgroundComponent] = [deps.workers]
    if settings.label_audit_enabled:
        auditor = ProcessLabelAuditor(
            AuditorSettings(
                encoder=settings.label_audit_encoder,
                models_root=settings.models_root,
                folds=settings.label_audit_folds,
                timeout_seconds=settings.label_audit_timeout_seconds,
            )
        )
        # the runner never wakes itself: it can hold the deps without its own wake
        runner = AuditRunner(deps, auditor, poll_seconds=settings.label_audit_poll_seconds)
        deps = replace(deps, audit_wake=runner.wake)
        background.append(runner)
    return ServiceParts(
        grpc_services=[
            ServiceRegistration(
                SERVICE_NAME,
                DatasetServicer(deps),
                service_pb2_grpc.add_DatasetServiceServicer_to_server,
            )
        ],
        background=background,
    )


SPEC = ServiceSpec(
    name="dataset",
    tables=[DatasetBase.metadata],
    publishes=[events_pb2.DatasetVersioned, events_pb2.DatasetAudited],
    wire=wire,
)
