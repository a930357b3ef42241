"""Wiring of the registry service: what makes it this service on the shared runtime.

:func:`wire` builds one :class:`~services.registry.handlers.deps.RegistryDeps` per service instance,
shared by the gRPC servicer, the Kafka subscriptions and the Alertmanager webhook, so all three
update the same metrics and wake the same WatchAlias streams. The webhook runs only when a
bearer token is configured.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from services.registry.adapters.artifact_checks import ArtifactVerifier
from services.registry.adapters.metrics import RegistryMetrics, RegistryStateCollector
from services.registry.adapters.notifier import AliasMoveNotifier, AliasMovePoller
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.tables import RegistryBase
from services.registry.adapters.verdict_checks import VerdictConfirmer
from services.registry.domain.alerts import RollbackAlertPolicy
from services.registry.domain.live_quality import LiveQualityRule
from services.registry.domain.rollback import RollbackBreaker
from services.registry.entrypoints.alert_webhook import AlertWebhookServer, WebhookLimits
from services.registry.entrypoints.grpc_api import RegistryServicer
from services.registry.entrypoints.subscriptions import registry_subscriptions
from services.registry.handlers.deps import RegistryDeps
from services.registry.settings import RegistrySettings
from shared.grpc import ServiceRegistration
from shared.runtime import BackgroundComponent, ServiceContext, ServiceParts, ServiceSpec
from tuneline.client.evaluator import EvaluatorClient
from tuneline.registry.v1 import events_pb2, service_pb2, service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


def wire(context: ServiceContext[RegistrySettings]) -> ServiceParts:
    """The servicer, the subscriptions, the alias-move poller and (with a token) the alert
    webhook, on one set of dependencies. Connects to nothing yet."""
    settings = context.settings
    metrics = RegistryMetrics(context.registry)
    context.registry.register(RegistryStateCollector(context.sessions))
    deps = RegistryDeps(
        sessions=context.sessions,
        source=context.source,
        metrics=metrics,
        notifier=AliasMoveNotifier(),
        wake_relay=context.relay.wake,
        live_quality=live_quality_rule(settings),
        rollback_breaker=rollback_breaker(settings),
        rollback_alerts=RollbackAlertPolicy(frozenset(settings.rollback_alert_names)),
        artifacts=ArtifactVerifier(
            context.artifacts,
            settings.resolved_trainer_artifact_root(context.common),
            evaluator_root=settings.resolved_evaluator_artifact_root(context.common),
        )
        if settings.verify_artifacts
        else None,
        verdicts=verdict_confirmer(settings),
        four_eyes=settings.four_eyes,
    )
    servicer = RegistryServicer(
        deps,
        stopping=context.stopping,
        watch_poll_seconds=settings.watch_poll_seconds,
    )
    return ServiceParts(
        grpc_services=[
            ServiceRegistration(
                SERVICE_NAME, servicer, service_pb2_grpc.add_RegistryServiceServicer_to_server
            )
        ],
        subscriptions=registry_subscriptions(deps),
        background=_background(context, deps),
        close_on_stop=[deps.notifier, *([deps.verdicts] if deps.verdicts else [])],
    )


def verdict_confirmer(settings: RegistrySettings) -> VerdictConfirmer | None:
    """Who confirms PASSED verdicts: the evaluator at TUNELINE_REGISTRY_EVALUATOR_TARGET.

    Unset, the registry takes an EvaluationCompleted's verdict on its word — fine for tests
    that feed it synthetic events, not for a deployment (every stack we ship sets it), hence
    the warning.
    """
    if not settings.evaluator_target:
        log.warning(
            "verdicts are not confirmed with the evaluator: set "
            "TUNELINE_REGISTRY_EVALUATOR_TARGET, or a forged PASSED EvaluationCompleted can "
            "promote"
        )
        return None
    return VerdictConfirmer(
        EvaluatorClient(settings.evaluator_target, timeout=settings.evaluator_timeout_seconds)
    )


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


def _background(
    context: ServiceContext[RegistrySettings], deps: RegistryDeps
) -> list[BackgroundComponent]:
    """The alias-move poller, and the alert webhook when a token is configured."""
    settings = context.settings

    def newest_move() -> int:
        with deps.sessions() as session:
            return RegistryRepository(session).newest_move_seq()

    components: list[BackgroundComponent] = [
        AliasMovePoller(deps.notifier, newest_move, settings.watch_poll_seconds)
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
    wire=wire,
)
