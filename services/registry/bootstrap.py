"""Wiring of the registry service: what makes it this service on the shared runtime.

One :class:`RegistryDeps` per service instance is shared by the gRPC servicer, the Kafka
subscriptions and the Alertmanager webhook, so all three update the same metrics and wake the
same WatchAlias streams. The webhook runs only when a bearer token is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.registry.adapters.metrics import RegistryMetrics, RegistryStateCollector
from services.registry.adapters.notifier import AliasMoveNotifier, AliasMovePoller
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.tables import RegistryBase
from services.registry.entrypoints.alert_webhook import AlertWebhookServer
from services.registry.entrypoints.grpc_api import RegistryServicer
from services.registry.entrypoints.subscriptions import registry_subscriptions
from services.registry.handlers import RegistryDeps
from services.registry.settings import RegistrySettings
from shared.events import Subscription
from shared.grpc import ServiceRegistration
from shared.runtime import BackgroundComponent, ServiceContext, ServiceSpec
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
    deps = RegistryDeps(
        source=context.source,
        metrics=metrics,
        notifier=AliasMoveNotifier(),
        wake_relay=context.relay.wake,
    )
    setattr(context, _DEPS_KEY, deps)
    return deps


def _settings(context: ServiceContext) -> RegistrySettings:
    settings = context.settings
    if not isinstance(settings, RegistrySettings):  # a plain ServiceSettings in some tests
        settings = RegistrySettings()
    return settings


def grpc_services(context: ServiceContext) -> Sequence[ServiceRegistration]:
    servicer = RegistryServicer(
        context.sessions,
        registry_deps(context),
        stopping=context.stopping,
        watch_poll_seconds=_settings(context).watch_poll_seconds,
    )
    return [
        ServiceRegistration(
            SERVICE_NAME, servicer, service_pb2_grpc.add_RegistryServiceServicer_to_server
        )
    ]


def subscriptions(context: ServiceContext) -> Sequence[Subscription]:
    return registry_subscriptions(registry_deps(context))


class _NotifierCloser:
    """Ends WatchAlias waits when the service stops (started first, stopped last)."""

    def __init__(self, deps: RegistryDeps) -> None:
        self._deps = deps

    def start(self) -> None:
        return None

    def stop(self) -> None:
        self._deps.notifier.close()


def background(context: ServiceContext) -> Sequence[BackgroundComponent]:
    deps = registry_deps(context)
    settings = _settings(context)
    sessions = context.sessions

    def newest_move() -> int:
        with sessions() as session:
            return RegistryRepository(session).newest_move_seq()

    components: list[BackgroundComponent] = [
        _NotifierCloser(deps),
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
