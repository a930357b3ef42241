"""The life cycle every service shares: wire, start, serve, stop gracefully.

A service describes itself with a :class:`ServiceSpec` — its tables, the events it publishes,
and one ``wire`` function that builds its parts (gRPC servicers, event subscriptions,
background components, things to close) once from a :class:`ServiceContext` — and
:class:`ServiceRuntime` does the rest in one order for every service:

start: schema → temp clean-up → outbox relay → background components → gRPC (SERVING) →
metrics endpoint, while a background thread ensures the topics and then starts the consumer
loop. Kafka is not needed to serve: without it, the service still reaches SERVING (after
``kafka_start_wait_seconds``), state changes commit and their events wait in the outbox until
the broker returns. stop: health NOT_SERVING and drain RPCs → consumer → background components
(in reverse) → what the wiring asked to close → a last outbox pass → producer → metrics endpoint.

Health follows the consumer loop too: NOT_SERVING while it is down after a crash (it restarts
by itself), SERVING again once it polls.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Generic, Protocol, TypeVar, runtime_checkable

from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry
from sqlalchemy import MetaData
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.artifacts import ArtifactStore, artifact_store_from_uri
from shared.db import create_database_engine, create_session_factory
from shared.events import (
    ConsumerLoop,
    EventMetrics,
    KafkaEventPublisher,
    OutboxRelay,
    Subscription,
    ensure_topics,
    topic_for,
)
from shared.events.producers import EVENT_PRODUCERS, service_source
from shared.events.security import kafka_client_security
from shared.grpc import GrpcServer, GrpcServerMetrics, ServiceRegistration, build_grpc_server
from shared.grpc.auth import ServerSecurity
from shared.grpc.capacity import StreamLimits
from shared.logging import configure_logging
from shared.metrics import MetricsServer, start_metrics_server
from shared.migrations import upgrade_schema
from shared.settings import CommonSettings, ServiceSettings

#: The service's own settings type: its ``wire`` gets them typed, with no fallback to check.
SettingsT = TypeVar("SettingsT", bound=ServiceSettings)

log = logging.getLogger(__name__)


@dataclass
class ServiceContext(Generic[SettingsT]):
    """The wired infrastructure a service's adapters and handlers are built from."""

    name: str
    common: CommonSettings
    settings: SettingsT
    registry: CollectorRegistry
    engine: Engine
    sessions: sessionmaker[Session]
    artifacts: ArtifactStore
    publisher: KafkaEventPublisher
    relay: OutboxRelay
    event_metrics: EventMetrics
    #: Set when the service begins to stop (before RPCs drain): server streams that would
    #: otherwise run forever (watches, progress) end on it.
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def source(self) -> str:
        """``ce_source`` of the events this service emits."""
        return service_source(self.name)


class BackgroundComponent(Protocol):
    """Something with ``start()`` and ``stop()`` that lives as long as the service."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@runtime_checkable
class SupportsClose(Protocol):
    """A client channel, a notifier's waits: something to close once nothing uses it."""

    def close(self) -> None: ...


#: What :attr:`ServiceParts.close_on_stop` takes: an object with ``close()``, or the callable.
Closer = SupportsClose | Callable[[], None]


@dataclass(frozen=True)
class ServiceParts:
    """What a service's ``wire`` built from its context: everything the runtime starts, serves
    and stops. Built once per runtime, so the servicers, subscriptions and background
    components share one set of dependencies (the same metrics, the same change notifiers)."""

    grpc_services: Sequence[ServiceRegistration]
    subscriptions: Sequence[Subscription] = ()
    #: Start/stop hooks (a worker supervisor, a webhook server): started in order before gRPC
    #: serves, stopped in reverse once RPCs drained and the consumer stopped.
    background: Sequence[BackgroundComponent] = ()
    #: Closed after every background component stopped, last listed first, so nothing that
    #: still runs uses what they close.
    close_on_stop: Sequence[Closer] = ()


def _close(closer: Closer) -> None:
    """Close one of :attr:`ServiceParts.close_on_stop`."""
    if isinstance(closer, SupportsClose):
        closer.close()
    else:
        closer()


@dataclass(frozen=True)
class ServiceSpec(Generic[SettingsT]):
    """What makes a service this service; everything else is the shared runtime."""

    name: str
    tables: Sequence[MetaData]
    publishes: Sequence[type[Message]]
    #: Builds the service's parts; the runtime calls it once, after the shared infrastructure.
    wire: Callable[[ServiceContext[SettingsT]], ServiceParts]


@dataclass
class ServiceRuntime(Generic[SettingsT]):
    """A wired service; :meth:`start` and :meth:`stop` run the shared life cycle."""

    spec: ServiceSpec[SettingsT]
    context: ServiceContext[SettingsT]
    grpc_server: GrpcServer
    consumer: ConsumerLoop | None
    parts: ServiceParts
    metrics_server: MetricsServer | None = None
    #: Set once the topics are ensured and the consumer loop started (Kafka was reachable).
    kafka_ready: threading.Event = field(default_factory=threading.Event)
    _stopped: threading.Event = field(default_factory=threading.Event)
    _lifecycle: threading.Lock = field(default_factory=threading.Lock)
    _serving: bool = False
    _kafka_setup: threading.Thread | None = None

    @property
    def components(self) -> Sequence[BackgroundComponent]:
        """The background components, in start order."""
        return self.parts.background

    @property
    def grpc_port(self) -> int:
        return self.grpc_server.port

    @property
    def metrics_port(self) -> int:
        return self.metrics_server.port if self.metrics_server else 0

    def start(self) -> None:
        ctx = self.context
        ctx.relay.start()
        if self.consumer:
            self.consumer.on_health.append(self._consumer_health_changed)
        self._kafka_setup = threading.Thread(
            target=self._ensure_topics_then_consume, name="kafka-setup", daemon=True
        )
        self._kafka_setup.start()
        # With a broker, start as before: topics exist and the consumer runs once start()
        # returns. Without one, serve anyway after a short wait.
        if not self.kafka_ready.wait(ctx.common.kafka_start_wait_seconds):
            log.warning(
                "Kafka not reachable; serving without it (events wait in the outbox)",
                extra={"bootstrap": ctx.common.kafka_bootstrap},
            )
        for component in self.components:
            component.start()
        self.grpc_server.start()
        with self._lifecycle:
            self._serving = True
            self._publish_health()
        self.metrics_server = start_metrics_server(
            ctx.registry, host=ctx.settings.grpc_host, port=ctx.settings.metrics_port
        )
        log.info(
            "service started",
            extra={"grpc_port": self.grpc_port, "metrics_port": self.metrics_port},
        )

    def _ensure_topics_then_consume(self) -> None:
        """Create the topics (retrying until Kafka answers), then start the consumer loop."""
        ctx = self.context
        topics = {topic_for(m) for m in self.spec.publishes}
        if self.consumer:
            topics |= set(self.consumer.topics)
        delay = 0.5
        while not self._stopped.is_set():
            try:
                ensure_topics(
                    ctx.common.kafka_bootstrap,
                    topics,
                    replication_factor=ctx.common.kafka_replication_factor,
                    min_insync_replicas=ctx.common.kafka_min_insync_replicas,
                    security=kafka_client_security(ctx.common),
                )
                break
            except Exception as error:  # noqa: BLE001 - no broker yet: keep trying
                log.warning(
                    "could not ensure Kafka topics; retrying",
                    extra={"error": repr(error), "retry_in_seconds": delay},
                )
                self._stopped.wait(delay)
                delay = min(delay * 2, 30.0)
        with self._lifecycle:
            if self._stopped.is_set():
                return
            if self.consumer:
                self.consumer.start()
            self.kafka_ready.set()
        ctx.relay.wake()  # events staged while Kafka was away go out now

    def _consumer_health_changed(self, healthy: bool) -> None:
        if not healthy:
            log.error("consumer loop is down; health NOT_SERVING until it restarts")
        with self._lifecycle:
            self._publish_health()

    def _publish_health(self) -> None:
        """SERVING while the server runs and the consumer loop (if any) is up."""
        if not self._serving or self._stopped.is_set():
            return  # not serving yet, or the graceful stop owns health now
        up = self.consumer is None or self.consumer.healthy
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if up
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.grpc_server.service_names):
            self.grpc_server.health.set(name, status)

    def stop(self) -> None:
        with self._lifecycle:
            if self._stopped.is_set():
                return
            self._stopped.set()
        self.grpc_server.stop()
        if self.consumer:
            self.consumer.stop()
        for component in reversed(self.components):
            component.stop()
        for closer in reversed(self.parts.close_on_stop):
            _close(closer)
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
    spec: ServiceSpec[SettingsT], common: CommonSettings, settings: SettingsT
) -> ServiceRuntime[SettingsT]:
    """Wire the real adapters for ``spec``. Connects to nothing until ``start``."""
    registry = CollectorRegistry(auto_describe=True)
    engine = create_database_engine(settings.resolved_database_url(common))
    upgrade_schema(engine, spec.name, spec.tables)
    sessions = create_session_factory(engine)
    artifacts = artifact_store_from_uri(
        settings.resolved_artifact_root(common),
        readable_roots=[common.data_dir],
        s3_endpoint_url=common.s3_endpoint_url,
        cache_dir=common.data_dir / spec.name / "artifact-cache",
    )
    artifacts.clean_temp()
    event_metrics = EventMetrics(registry)
    # the service's own Kafka user (SASL_SSL): the broker lets it write only its own topics
    kafka_security = kafka_client_security(common)
    publisher = KafkaEventPublisher(
        common.kafka_bootstrap, client_id=f"tuneline-{spec.name}", security=kafka_security
    )
    relay = OutboxRelay(
        sessions,
        publisher,
        metrics=event_metrics,
        poll_seconds=common.outbox_poll_seconds,
        park_after_attempts=common.outbox_park_after_attempts,
        retention=timedelta(hours=common.outbox_retention_hours),
        # replicas on one host (tuneline up, compose) must not share a lease holder's id
        relay_id=settings.replica_id(),
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
    parts = spec.wire(context)
    subscriptions = parts.subscriptions
    consumer = (
        ConsumerLoop(
            bootstrap=common.kafka_bootstrap,
            group_id=settings.resolved_consumer_group(),
            subscriptions=subscriptions,
            session_factory=sessions,
            dlq_publisher=publisher,
            metrics=event_metrics,
            max_attempts=common.consumer_max_attempts,
            retry_backoff_seconds=common.consumer_retry_backoff_seconds,
            max_retry_backoff_seconds=common.consumer_max_retry_backoff_seconds,
            after_commit=relay.wake,
            # every service accepts an event only from the service that produces its type
            producers=EVENT_PRODUCERS,
            security=kafka_security,
        )
        if subscriptions
        else None
    )
    grpc_server = build_grpc_server(
        host=settings.grpc_host,
        port=settings.grpc_port,
        services=parts.grpc_services,
        metrics=GrpcServerMetrics(registry),
        grace_seconds=common.grpc_shutdown_grace_seconds,
        limits=StreamLimits(
            max_streams=common.grpc_max_streams,
            max_streams_per_method=common.grpc_max_streams_per_method,
            max_streams_per_client=common.grpc_max_streams_per_client,
            unary_workers=common.grpc_unary_workers,
            upload_idle_seconds=common.grpc_upload_idle_seconds,
        ),
        keepalive_seconds=common.grpc_keepalive_seconds,
        keepalive_timeout_seconds=common.grpc_keepalive_timeout_seconds,
        security=ServerSecurity.from_settings(common),
        health_port=settings.grpc_health_port,
        reflection=common.grpc_reflection,
    )
    grpc_server.on_stop.append(context.stopping.set)
    return ServiceRuntime(
        spec=spec,
        context=context,
        grpc_server=grpc_server,
        consumer=consumer,
        parts=parts,
    )


def run_service(
    spec: ServiceSpec[SettingsT], settings_type: type[SettingsT], argv: Sequence[str] | None = None
) -> None:
    """A service's ``main``: read settings once, configure logging, serve until signalled.

    With the one argument ``migrate`` it only brings its database schema to the newest
    revision and exits (a deploy step or Kubernetes init container; serving migrates too).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["migrate"]):
        raise SystemExit(f"usage: python -m services.{spec.name}.entrypoints.main [migrate]")
    common = CommonSettings()
    settings = settings_type()
    configure_logging(spec.name, common.log_level, common.log_format)
    if args == ["migrate"]:
        engine = create_database_engine(settings.resolved_database_url(common))
        try:
            upgrade_schema(engine, spec.name, spec.tables)
        finally:
            engine.dispose()
        log.info("database schema is at the newest revision")
        return
    build_runtime(spec, common, settings).serve_forever()
