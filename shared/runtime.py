"""The life cycle every service shares: wire, start, serve, stop gracefully.

A service describes itself with a :class:`ServiceSpec` — its tables, the events it publishes,
how to build its gRPC servicers and event subscriptions from a :class:`ServiceContext` — and
:class:`ServiceRuntime` does the rest in one order for all five services:

start: schema → temp clean-up → topics → outbox relay → consumer loop → gRPC (SERVING) →
metrics endpoint. stop: health NOT_SERVING and drain RPCs → consumer → a last outbox pass →
producer → metrics endpoint.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from sqlalchemy import MetaData
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.artifacts import LocalArtifactStore
from shared.db import create_database_engine, create_schema, create_session_factory
from shared.events import (
    ConsumerLoop,
    EventMetrics,
    KafkaEventPublisher,
    OutboxRelay,
    Subscription,
    ensure_topics,
    topic_for,
)
from shared.grpc import GrpcServer, GrpcServerMetrics, ServiceRegistration, build_grpc_server
from shared.logging import configure_logging
from shared.metrics import MetricsServer, start_metrics_server
from shared.settings import CommonSettings, ServiceSettings

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """The wired infrastructure a service's adapters and handlers are built from."""

    name: str
    common: CommonSettings
    settings: ServiceSettings
    registry: CollectorRegistry
    engine: Engine
    sessions: sessionmaker[Session]
    artifacts: LocalArtifactStore
    publisher: KafkaEventPublisher
    relay: OutboxRelay
    event_metrics: EventMetrics
    #: Set when the service begins to stop (before RPCs drain): server streams that would
    #: otherwise run forever (watches, progress) end on it.
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def source(self) -> str:
        """``ce_source`` of the events this service emits."""
        return f"tuneline/{self.name}"


class BackgroundComponent(Protocol):
    """Something with ``start()`` and ``stop()`` that lives as long as the service."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class ServiceSpec:
    """What makes a service this service; everything else is the shared runtime."""

    name: str
    tables: Sequence[MetaData]
    publishes: Sequence[type[Message]]
    grpc_services: Callable[[ServiceContext], Sequence[ServiceRegistration]]
    subscriptions: Callable[[ServiceContext], Sequence[Subscription]] = lambda _ctx: ()
    #: Extra start/stop hooks (a worker supervisor, a webhook server), started last.
    background: Callable[[ServiceContext], Sequence[BackgroundComponent]] = lambda _ctx: ()


@dataclass
class ServiceRuntime:
    """A wired service; :meth:`start` and :meth:`stop` run the shared life cycle."""

    spec: ServiceSpec
    context: ServiceContext
    grpc_server: GrpcServer
    consumer: ConsumerLoop | None
    components: Sequence[BackgroundComponent]
    metrics_server: MetricsServer | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def grpc_port(self) -> int:
        return self.grpc_server.port

    @property
    def metrics_port(self) -> int:
        return self.metrics_server.port if self.metrics_server else 0

    def start(self) -> None:
        ctx = self.context
        topics = {topic_for(m) for m in self.spec.publishes}
        if self.consumer:
            topics |= set(self.consumer.topics)
        ensure_topics(ctx.common.kafka_bootstrap, topics)
        ctx.relay.start()
        if self.consumer:
            self.consumer.start()
        for component in self.components:
            component.start()
        self.grpc_server.start()
        self.metrics_server = start_metrics_server(
            ctx.registry, host=ctx.settings.grpc_host, port=ctx.settings.metrics_port
        )
        log.info(
            "service started",
            extra={"grpc_port": self.grpc_port, "metrics_port": self.metrics_port},
        )

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.grpc_server.stop()
        if self.consumer:
            self.consumer.stop()
        for component in reversed(self.components):
            component.stop()
        self.context.relay.stop()
        self.context.publisher.close()
        if self.metrics_server:
            self.metrics_server.stop()
        self.context.engine.dispose()
        log.info("service stopped")

    def serve_forever(self) -> None:
        """Start, stop on SIGTERM/SIGINT, and block until the server has stopped."""
        self.grpc_server.stop_on_signals()
        self.start()
        self.grpc_server.wait()
        self.stop()


def build_runtime(
    spec: ServiceSpec, common: CommonSettings, settings: ServiceSettings
) -> ServiceRuntime:
    """Wire the real adapters for ``spec``. Connects to nothing until ``start``."""
    registry = CollectorRegistry(auto_describe=True)
    engine = create_database_engine(settings.resolved_database_url(common))
    create_schema(engine, spec.tables)
    sessions = create_session_factory(engine)
    artifacts = LocalArtifactStore(
        settings.resolved_artifact_root(common), readable_roots=[common.data_dir]
    )
    artifacts.clean_temp()
    event_metrics = EventMetrics(registry)
    publisher = KafkaEventPublisher(common.kafka_bootstrap, client_id=f"tuneline-{spec.name}")
    relay = OutboxRelay(
        sessions, publisher, metrics=event_metrics, poll_seconds=common.outbox_poll_seconds
    )
    context = ServiceContext(
        name=spec.name,
        common=common,
        settings=settings,
        registry=registry,
        engine=engine,
        sessions=sessions,
        artifacts=artifacts,
        publisher=publisher,
        relay=relay,
        event_metrics=event_metrics,
    )
    subscriptions = spec.subscriptions(context)
    consumer = (
        ConsumerLoop(
            bootstrap=common.kafka_bootstrap,
            group_id=settings.resolved_consumer_group(),
            subscriptions=subscriptions,
            session_factory=sessions,
            dlq_publisher=publisher,
            metrics=event_metrics,
            max_attempts=common.consumer_max_attempts,
            after_commit=relay.wake,
        )
        if subscriptions
        else None
    )
    grpc_server = build_grpc_server(
        host=settings.grpc_host,
        port=settings.grpc_port,
        services=spec.grpc_services(context),
        metrics=GrpcServerMetrics(registry),
        grace_seconds=common.grpc_shutdown_grace_seconds,
    )
    grpc_server.on_stop.append(context.stopping.set)
    return ServiceRuntime(
        spec=spec,
        context=context,
        grpc_server=grpc_server,
        consumer=consumer,
        components=spec.background(context),
    )


def run_service(spec: ServiceSpec, settings_type: type[ServiceSettings]) -> None:
    """A service's ``main``: read settings once, configure logging, serve until signalled."""
    common = CommonSettings()
    settings = settings_type()
    configure_logging(spec.name, common.log_level, common.log_format)
    build_runtime(spec, common, settings).serve_forever()
