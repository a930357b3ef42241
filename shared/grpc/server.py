"""Build a gRPC server the way every Tuneline service runs one.

:func:`build_grpc_server` returns a :class:`GrpcServer` that already has

* ``grpc.health.v1`` health, SERVING for the overall server and each registered service;
* server reflection, so ``grpcurl`` works (unless turned off: production);
* TLS or mutual TLS and the auth interceptor (:mod:`shared.grpc.auth`), as configured;
* a metrics interceptor (``tuneline_grpc_server_handled_total`` by method and code,
  ``tuneline_grpc_server_handling_seconds``) on the Prometheus registry passed in;
* the error-mapping interceptor: domain errors become statuses with rich details;
* stream capacity (:mod:`shared.grpc.capacity`): workers reserved for unary calls, caps on
  concurrent streams per server, method and client, and an idle timeout on uploads;
* keepalive pings, so a watcher whose host vanished frees its stream slot;
* a graceful stop: health turns NOT_SERVING first (load balancers stop sending), then
  in-flight RPCs get a grace period to drain.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as server_reflection
from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.errors import DomainError
from shared.grpc.auth import ServerSecurity
from shared.grpc.capacity import StreamCapacityInterceptor, StreamLimits
from shared.grpc.errors import abort_with
from shared.grpc.interception import rewrap_handler
from shared.grpc.keepalive import server_keepalive_options
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

#: Buckets sized for RPCs from sub-millisecond reads to multi-second uploads.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GrpcServerMetrics:
    """The standard gRPC server metrics, registered on the service's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_service", "grpc_method", "grpc_type")
        self.started = Counter(
            "tuneline_grpc_server_started_total",
            "RPCs started on the server.",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "tuneline_grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "tuneline_grpc_server_handling_seconds",
            "Time from receiving an RPC to sending its status.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The status the handler set (``ServicerContext.code`` is missing from grpc-stubs)."""
    return context.code()  # type: ignore[attr-defined]


def _fail(context: grpc.ServicerContext, error: Exception) -> None:
    """Turn an exception escaping a handler into the right status."""
    if isinstance(error, DomainError):
        abort_with(context, error)
    if _code(context) is not None:  # the handler already aborted; keep its status
        raise error
    abort_with(context, error)


class _ServerInterceptor(grpc.ServerInterceptor):
    """Maps domain errors to statuses and records metrics for every RPC, streams included."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        labels = (service, method, _rpc_type(handler))
        metrics = self._metrics

        def finish(context: grpc.ServicerContext, started: float) -> None:
            code = _code(context) or grpc.StatusCode.OK
            if not context.is_active() and code == grpc.StatusCode.OK:
                code = grpc.StatusCode.CANCELLED  # the client went away mid-call
            metrics.handled.labels(*labels, code.name).inc()
            metrics.handling_seconds.labels(*labels).observe(time.perf_counter() - started)

        def wrap_unary_response(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                metrics.started.labels(*labels).inc()
                started = time.perf_counter()
                try:
                    return behaviour(request, context)
                except Exception as error:  # noqa: BLE001 - every escape is mapped
                    _fail(context, error)
                finally:
                    finish(context, started)

            return call

        def wrap_stream_response(behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                metrics.started.labels(*labels).inc()
                started = time.perf_counter()
                try:
                    yield from behaviour(request, context)
                except Exception as error:  # noqa: BLE001 - every escape is mapped
                    _fail(context, error)
                finally:
                    finish(context, started)

            return call

        def wrap(behaviour: Callable[..., Any], response_streaming: bool) -> Callable[..., Any]:
            if response_streaming:
                return wrap_stream_response(behaviour)
            return wrap_unary_response(behaviour)

        return rewrap_handler(handler, wrap)


@dataclass(frozen=True)
class ServiceRegistration:
    """A servicer and the generated ``add_XServicer_to_server`` function that mounts it.

    ``full_name`` is the proto service name (``tuneline.dataset.v1.DatasetService``), used for
    health and reflection.
    """

    full_name: str
    servicer: object
    add_to_server: Callable[[Any, grpc.Server], None]


@dataclass
class GrpcServer:
    """A started-or-startable server plus the handles needed to stop it well."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]
    grace_seconds: float = 10.0
    #: Called first thing in :meth:`stop`, before draining: long-lived streams end on it
    #: cleanly instead of being cancelled when the grace period runs out.
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    #: The plaintext health-only server (Kubernetes' native gRPC probes speak no TLS), if any.
    health_server: grpc.Server | None = None
    health_port: int = 0
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        for name in ("", *self.service_names):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC server listening", extra={"port": self.port})

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first, then give in-flight RPCs ``grace`` seconds to finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for callback in self.on_stop:
            callback()
        self.health.enter_graceful_shutdown()
        self.server.stop(self.grace_seconds if grace is None else grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        log.info("gRPC server stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()

    def stop_on_signals(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Stop gracefully on SIGTERM/SIGINT (main thread only, as Python requires)."""

        def handle(signum: int, _frame: object) -> None:
            log.info("stopping on signal", extra={"signal": signal.Signals(signum).name})
            threading.Thread(target=self.stop, name="grpc-graceful-stop", daemon=True).start()

        for signum in signals:
            signal.signal(signum, handle)


def build_grpc_server(
    *,
    host: str,
    port: int,
    services: Iterable[ServiceRegistration],
    metrics: GrpcServerMetrics,
    limits: StreamLimits | None = None,
    keepalive_seconds: float = 30.0,
    keepalive_timeout_seconds: float = 10.0,
    grace_seconds: float = 10.0,
    max_message_bytes: int = 8 * 1024 * 1024,
    security: ServerSecurity | None = None,
    health_port: int | None = None,
    reflection: bool = True,
) -> GrpcServer:
    """Create (not start) a server with health, reflection, metrics and error mapping.

    ``port=0`` binds any free port; the bound port is on the returned object. ``security``
    (TLS and the auth interceptor) defaults to what the ``TUNELINE_AUTH_*``/``TUNELINE_TLS_*``
    environment asks for, which refuses to build a server when nothing is configured.
    ``health_port`` (``0``: any free) adds a plaintext port on ``host`` that serves
    ``grpc.health.v1`` and nothing else, for probes that cannot speak TLS. ``limits`` sizes
    the worker pool and caps streams (:class:`StreamLimits`' defaults when ``None``); the server
    pings idle connections every ``keepalive_seconds`` and drops them after
    ``keepalive_timeout_seconds`` without an answer. ``reflection=False`` leaves server
    reflection out (production: no API listing for whoever reaches the port).
    """
    services = tuple(services)
    if security is None:
        security = ServerSecurity.from_settings(CommonSettings())
    interceptors: list[grpc.ServerInterceptor] = [_ServerInterceptor(metrics)]
    if security.interceptor is not None:  # inside the metrics one, so denials are counted
        interceptors.append(security.interceptor)
    limits = limits or StreamLimits()
    # innermost: the caller is authenticated by now, so streams are counted per principal
    interceptors.append(StreamCapacityInterceptor(limits))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.worker_threads, thread_name_prefix="grpc"),
        interceptors=interceptors,
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            *server_keepalive_options(keepalive_seconds, keepalive_timeout_seconds),
        ],
    )
    for registration in services:
        registration.add_to_server(registration.servicer, server)
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=2),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(r.full_name for r in services)
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if reflection:
        server_reflection.enable_server_reflection(
            (
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                server_reflection.SERVICE_NAME,
            ),
            server,
        )
    address = f"{host}:{port}"
    if security.credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, security.credentials)
    if bound == 0:
        raise OSError(f"could not bind gRPC server to {host}:{port}")
    health_server = None
    bound_health = 0
    if health_port is not None:
        health_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="grpc-health"),
            options=[("grpc.so_reuseport", 0)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        bound_health = health_server.add_insecure_port(f"{host}:{health_port}")
        if bound_health == 0:
            raise OSError(f"could not bind the gRPC health port to {host}:{health_port}")
    return GrpcServer(
        server=server,
        port=bound,
        health=health_servicer,
        service_names=names,
        grace_seconds=grace_seconds,
        health_server=health_server,
        health_port=bound_health,
    )
