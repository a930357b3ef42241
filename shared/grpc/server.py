"""Build a gRPC server the way every Tuneline service runs one.

:func:`build_grpc_server` returns a :class:`GrpcServer` that already has

* ``grpc.health.v1`` health, SERVING for the overall server and each registered service;
* server reflection, so ``grpcurl`` and Kubernetes' native gRPC probes work;
* a metrics interceptor (``tuneline_grpc_server_handled_total`` by method and code,
  ``tuneline_grpc_server_handling_seconds``) on the Prometheus registry passed in;
* the error-mapping interceptor: domain errors become statuses with rich details;
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
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.errors import DomainError
from shared.grpc.errors import abort_with

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

        wrap = wrap_stream_response if handler.response_streaming else wrap_unary_response
        factory: Any
        behaviour: Any
        if handler.unary_unary:
            factory, behaviour = grpc.unary_unary_rpc_method_handler, handler.unary_unary
        elif handler.unary_stream:
            factory, behaviour = grpc.unary_stream_rpc_method_handler, handler.unary_stream
        elif handler.stream_unary:
            factory, behaviour = grpc.stream_unary_rpc_method_handler, handler.stream_unary
        else:
            factory, behaviour = grpc.stream_stream_rpc_method_handler, handler.stream_stream
        return factory(
            wrap(behaviour),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


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
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.server.start()
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
    max_workers: int = 16,
    grace_seconds: float = 10.0,
    max_message_bytes: int = 8 * 1024 * 1024,
) -> GrpcServer:
    """Create (not start) a server with health, reflection, metrics and error mapping.

    ``port=0`` binds any free port; the bound port is on the returned object.
    """
    services = tuple(services)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[_ServerInterceptor(metrics)],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
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
    reflection.enable_server_reflection(
        (
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind gRPC server to {host}:{port}")
    return GrpcServer(
        server=server,
        port=bound,
        health=health_servicer,
        service_names=names,
        grace_seconds=grace_seconds,
    )
