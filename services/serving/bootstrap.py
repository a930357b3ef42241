"""Wiring of the serving service: what makes it this service on the shared runtime.

One :class:`ServingWiring` per service instance is shared by the gRPC servicer, the Kafka
subscriptions and the background threads (the runtime builds them separately from one
context, so it is kept on the context).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
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
from shared.events import Subscription
from shared.grpc import ServiceRegistration
from shared.runtime import (
    BackgroundComponent,
    CloseOnStop,
    ServiceContext,
    ServiceSpec,
    service_settings,
)
from tuneline.client.registry import RegistryClient, model_name
from tuneline.serving.v1 import service_pb2, service_pb2_grpc

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name

_WIRING_KEY = "_serving_wiring"


@dataclass
class ServingWiring:
    """The instance's shared parts."""

    settings: ServingSettings
    deps: ServingDeps
    loader: ReleaseLoader
    reporter: LiveQualityReporter
    watcher: AliasWatcher
    reports: RegistryGateway


def _registry(settings: ServingSettings) -> RegistryGateway:
    client = RegistryClient(settings.registry_target, timeout=settings.registry_timeout_seconds)
    return RegistryGateway(client, metric=settings.live_quality_metric, source=settings.source)


def wiring(context: ServiceContext) -> ServingWiring:
    """Build the instance's parts once per context. Connects to nothing yet."""
    existing = getattr(context, _WIRING_KEY, None)
    if isinstance(existing, ServingWiring):
        return existing
    settings = service_settings(context, ServingSettings)
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
    watcher = AliasWatcher(
        _registry(settings),
        deps.table,
        loader.offer,
        models=models,
        retry_seconds=settings.watch_retry_seconds,
    )
    built = ServingWiring(settings, deps, loader, reporter, watcher, reports)
    setattr(context, _WIRING_KEY, built)
    return built


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    return [
        ServiceRegistration(
            SERVICE_NAME,
            ServingServicer(wiring(context).deps),
            service_pb2_grpc.add_ServingServiceServicer_to_server,
        )
    ]


def subscriptions(context: ServiceContext) -> Sequence[Subscription]:
    parts = wiring(context)
    return serving_subscriptions.subscriptions(parts.loader, parts.watcher)


def background(context: ServiceContext) -> Sequence[BackgroundComponent]:
    """Started in order, stopped in reverse: the reporter's last pass before its channel
    closes, the loader before the watcher that feeds it."""
    parts = wiring(context)
    return [CloseOnStop(parts.reports.close), parts.reporter, parts.loader, parts.watcher]


SPEC = ServiceSpec(
    name="serving",
    tables=[],
    publishes=[],
    grpc_services=grpc_services,
    subscriptions=subscriptions,
    background=background,
)
