"""Wiring of the serving service: what makes it this service on the shared runtime.

:func:`wire` builds one :class:`~services.serving.handlers.deps.ServingDeps` per service
instance, shared by the gRPC servicer, the Kafka subscriptions and the background threads.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.serving.adapters.artifacts import VerifiedArtifacts
from services.serving.adapters.engine import TorchModelLoader
from services.serving.adapters.metrics import ServingMetrics
from services.serving.adapters.registry_gateway import RegistryGateway
from services.serving.domain import FeedbackLedger, PredictionMemory, ServingTable
from services.serving.entrypoints import subscriptions as serving_subscriptions
from services.serving.entrypoints.grpc_api import ServingServicer
from services.serving.entrypoints.loader import ReleaseLoader
from services.serving.entrypoints.reporter import LiveQualityReporter
from services.serving.entrypoints.watcher import AliasWatcher
from services.serving.handlers.deps import ServingDeps
from services.serving.settings import ServingSettings
from shared.grpc import ServiceRegistration
from shared.runtime import ServiceContext, ServiceParts, ServiceSpec
from tuneline.client.registry import RegistryClient, model_name
from tuneline.serving.v1 import service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name


def _registry(settings: ServingSettings) -> RegistryGateway:
    client = RegistryClient(settings.registry_target, timeout=settings.registry_timeout_seconds)
    return RegistryGateway(client, metric=settings.live_quality_metric, source=settings.source)


def wire(context: ServiceContext[ServingSettings]) -> ServiceParts:
    """The servicer, the subscriptions and the background threads. Connects to nothing yet."""
    settings = context.settings
    models = [model_name(m) for m in settings.models]
    reports = _registry(settings)
    deps = ServingDeps(
        table=ServingTable(models),
        predictions=PredictionMemory(settings.prediction_memory),
        ledger=FeedbackLedger(),
        fetcher=VerifiedArtifacts(context.artifacts),
        loader=TorchModelLoader(
            models_root=settings.models_root,
            allowed_roots=settings.model_allowed_roots,
            device=settings.device,
        ),
        sink=reports,
        metrics=ServingMetrics(context.registry),
        clock=lambda: datetime.now(UTC),
        new_id=lambda: uuid.uuid4().hex,
        keep_previous_model=settings.keep_previous_model,
        max_new_tokens=settings.max_new_tokens,
        success_threshold=settings.feedback_success_threshold,
        report_every_feedbacks=settings.report_every_feedbacks,
    )
    reporter = LiveQualityReporter(deps, interval_seconds=settings.report_interval_seconds)
    deps.report_due = reporter.wake
    loader = ReleaseLoader(deps)
    # the watcher's own channel: its long-lived WatchAlias streams never wait behind reports
    watched = _registry(settings)
    watcher = AliasWatcher(
        watched,
        deps.table,
        loader.offer,
        models=models,
        retry_seconds=settings.watch_retry_seconds,
    )
    return ServiceParts(
        grpc_services=[
            ServiceRegistration(
                SERVICE_NAME,
                ServingServicer(deps),
                service_pb2_grpc.add_ServingServiceServicer_to_server,
            )
        ],
        subscriptions=serving_subscriptions.subscriptions(loader, watcher),
        # started in order, stopped in reverse: the loader before the watcher that feeds it;
        # the reporter's last pass before its channel closes
        background=[reporter, loader, watcher],
        close_on_stop=[reports, watched],
    )


SPEC = ServiceSpec(
    name="serving",
    tables=[],
    publishes=[],
    wire=wire,
)
