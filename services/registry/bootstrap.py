"""Wiring of the registry service: what makes it this service on the shared runtime.

One :class:`RegistryDeps` per service instance is shared by the gRPC servicer, the Kafka
subscriptions and the Alertmanager webhook, so all three update the same metrics and wake the
same WatchAlias streams. The webhook runs only when a bearer token is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from services.registry.adapters.artifact_checks import ArtifactVerifier
from services.registry.adapters.metrics import RegistryMetrics, RegistryStateCollector
from services.registry.adapters.notifier import AliasMoveNotifier, AliasMovePoller
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.tables import RegistryBase
from services.registry.domain import LiveQualityRule, RollbackAlertPolicy, RollbackBreaker
from services.registry.entrypoints.alert_webhook import AlertWebhookServer, WebhookLimits
from services.registry.entrypoints.grpc_api import RegistryServicer
from services.registry.entrypoints.subscriptions import registry_subscriptions
from services.registry.handlers import RegistryDeps
from services.registry.settings import RegistrySettings
from shared.events import Subscription
from shared.grpc import ServiceRegistration
from shared.runtime import (
    BackgroundComponent,
    CloseOnStop,
    ServiceContext,
    ServiceSpec,
    service_settings,
)
from tuneline.registry.v1 import events_pb2, service_pb2, service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name

_DEPS_KEY = "_registry_deps"


def registry_deps(context: ServiceContext) -> RegistryDeps:
    """The instance's dependencies, built once per context (the three entrypoints share them).

    Kept on the context itself because the runtime calls ``subscriptions``, ``grpc_services``
    and ``background`` separately with the same context.
    """
    existing = getattr(context, _DEPS_KEY, None)
    if isinstance(existing, RegistryDeps):
        return existing
    metrics = RegistryMetrics(context.registry)
    context.registry.register(RegistryStateCollector(context.sessions))
    settings = service_settings(context, RegistrySettings)
    deps = RegistryDeps(
        source=context.source,
        metrics=metrics,
        notifier=AliasMoveNotifier(),
        wake_relay=context.relay.wake,
        live_quality=live_quality_rule(service_settings(context, RegistrySettings)),
        rollback_breaker=rollback_breaker(service_settings(context, RegistrySettings)),
        rollback_alerts=RollbackAlertPolicy(frozenset(settings.rollback_alert_names)),
        artifacts=ArtifactVerifier(
            context.artifacts, settings.resolved_trainer_artifact_root(context.common)
        )
        if settings.verify_artifacts
        else None,
    )
    setattr(context, _DEPS_KEY, deps)
    return deps


def live_quality_rule(settings: RegistrySettings) -> LiveQualityRule:
    """The live quality rule the settings ask for."""
    return LiveQualityRule(
        alpha=settings.live_quality_alpha,
        min_trials=settings.live_quality_min_trials,
        prior_weight=settings.live_quality_prior_weight,
    )


def rollback_breaker(settings: RegistrySettings) -> RollbackBreaker:
    """The automatic-rollback circuit breaker the settings ask for."""
    return RollbackBreaker(
        limit=settings.auto_rollback_limit,
        window=timedelta(seconds=settings.auto_rollback_window_seconds),
    )


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    servicer = RegistryServicer(
        context.sessions,
        registry_deps(context),
        stopping=context.stopping,
        watch_poll_seconds=service_settings(context, RegistrySettings).watch_poll_seconds,
    )
    return [
        ServiceRegistration(
            SERVICE_NAME, servicer, service_pb2_grpc.add_RegistryServiceServicer_to_server
        )
    ]


def subscriptions(context: ServiceContext) -> Sequence[Subscription]:
    return registry_subscriptions(registry_deps(context))


def background(context: ServiceContext) -> Sequence[BackgroundComponent]:
    deps = registry_deps(context)
    settings = service_settings(context, RegistrySettings)
    sessions = context.sessions

    def newest_move() -> int:
        with sessions() as session:
            return RegistryRepository(session).newest_move_seq()

    components: list[BackgroundComponent] = [
        CloseOnStop(deps.notifier.close),
        AliasMovePoller(deps.notifier, newest_move, settings.watch_poll_seconds),
    ]
    token = settings.resolved_webhook_token()
    if token is None:
        log.warning(
            "alert webhook disabled: set TUNELINE_REGISTRY_WEBHOOK_TOKEN "
            "(or TUNELINE_REGISTRY_WEBHOOK_TOKEN_FILE) to enable rollbacks by alert"
        )
        return components
    components.append(
        AlertWebhookServer(
            host=settings.webhook_host,
            port=settings.webhook_port,
            path=settings.webhook_path,
            token=token,
            sessions=context.sessions,
            deps=deps,
            limits=WebhookLimits(
                max_connections=settings.webhook_max_connections,
                read_timeout_seconds=settings.webhook_read_timeout_seconds,
                request_timeout_seconds=settings.webhook_request_timeout_seconds,
                max_body_bytes=settings.webhook_max_body_bytes,
                max_json_depth=settings.webhook_max_json_depth,
            ),
        )
    )
    return components


SPEC = ServiceSpec(
    name="registry",
    tables=[RegistryBase.metadata],
    publishes=[events_pb2.ModelPromoted, events_pb2.ModelRolledBack],
    grpc_services=grpc_services,
    subscriptions=subscriptions,
    background=background,
)
