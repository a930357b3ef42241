"""Keeping long-lived streams from starving unary calls on a thread-per-RPC gRPC server.

The synchronous gRPC server runs every RPC on a worker thread for as long as it lasts, so a
WatchAlias, a WatchTrainingJob or an idle upload holds a thread for minutes. Left alone, a few
dozen watchers take every worker and Health or RollbackModel queue behind them. The server
therefore gets ``max_streams + unary_workers`` workers and :class:`StreamCapacityInterceptor`
admits at most ``max_streams`` streaming RPCs at once (and fewer per method and per client),
so ``unary_workers`` threads always stay free for unary calls. A stream beyond a cap ends at
once with RESOURCE_EXHAUSTED and details naming the cap, instead of waiting for a thread.

Uploads (client-streaming RPCs) also get an idle timeout: a client that opens one and stops
sending is cut off after ``upload_idle_seconds`` so it cannot park a thread forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from shared.errors import ResourceExhausted
from shared.grpc.errors import abort_with
from shared.grpc.interception import rewrap_handler
from shared.security import current_principal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamLimits:
    """How many streaming RPCs a server runs at once, and how long an upload may sit idle."""

    #: Streaming RPCs (any method, any client) running at once.
    max_streams: int = 256
    #: Streaming RPCs of one method running at once.
    max_streams_per_method: int = 128
    #: Streaming RPCs of one client (authenticated principal, else peer host) at once.
    max_streams_per_client: int = 64
    #: Worker threads kept for unary calls on top of ``max_streams``.
    unary_workers: int = 16
    #: A client-streaming RPC that receives nothing for this long is cancelled.
    upload_idle_seconds: float = 60.0

    @property
    def worker_threads(self) -> int:
        return self.max_streams + self.unary_workers

    @property
    def max_concurrent_rpcs(self) -> int:
        """gRPC's own admission cap: every stream plus a queue of unary calls per worker."""
        return self.max_streams + 4 * self.unary_workers


def _client_key(context: grpc.ServicerContext) -> str:
    """Who is calling: the authenticated principal, else the peer's host without its port."""
    principal = current_principal()
    if principal is not None:
        return f"principal:{principal.name}"
    peer = context.peer()  # "ipv4:127.0.0.1:53412", "ipv6:[::1]:53412", "unix:..."
    host = peer.rpartition(":")[0] if peer.startswith(("ipv4:", "ipv6:")) else peer
    return f"peer:{host}"


class _StreamSlots:
    """Counts of running streams in total, per method and per client, under one lock."""

    def __init__(self, limits: StreamLimits) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._total = 0
        self._per_method: Counter[str] = Counter()
        self._per_client: Counter[str] = Counter()

    def acquire(self, method: str, client: str) -> None:
        """Take a slot or raise :class:`ResourceExhausted` naming the cap that was reached."""
        limits = self._limits
        with self._lock:
            if self._total >= limits.max_streams:
                cap, limit = "server", limits.max_streams
            elif self._per_method[method] >= limits.max_streams_per_method:
                cap, limit = "method", limits.max_streams_per_method
            elif self._per_client[client] >= limits.max_streams_per_client:
                cap, limit = "client", limits.max_streams_per_client
            else:
                self._total += 1
                self._per_method[method] += 1
                self._per_client[client] += 1
                return
        raise ResourceExhausted(
            f"too many concurrent streams ({cap} cap of {limit}); retry later",
            metadata={"method": method, "cap": cap, "limit": str(limit), "client": client},
        )

    def release(self, method: str, client: str) -> None:
        with self._lock:
            self._total -= 1
            self._per_method[method] -= 1
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]


class IdleUploadCancelled(grpc.RpcError):
    """Raised by an upload's request iterator once the server cut it off for idleness.

    A cancelled call's iterator would otherwise just end, which a handler cannot tell from a
    finished upload; as an ``RpcError`` it takes the same path as a client that went away.
    """


class _IdleWatchdog:
    """Cancels an RPC when ``seconds`` pass with no request message; each message re-arms it.

    One thread per stream sleeps until the current deadline; a message only moves the
    deadline (a float store), so a stream of thousands of chunks costs no thread per chunk.
    """

    def __init__(self, context: grpc.ServicerContext, seconds: float, method: str) -> None:
        self._context = context
        self._seconds = seconds
        self._method = method
        self._deadline = 0.0
        self._stopped = threading.Event()
        self._expired = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stopped.wait(max(0.0, self._deadline - time.monotonic())):
            if time.monotonic() >= self._deadline:  # no message moved it while we slept
                self._expire()
                return

    def _expire(self) -> None:
        self._expired.set()
        log.warning(
            "cancelling an idle upload stream",
            extra={"method": self._method, "idle_seconds": self._seconds},
        )
        self._context.cancel()

    def arm(self) -> None:
        self._deadline = time.monotonic() + self._seconds
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="upload-idle-watchdog", daemon=True
            )
            self._thread.start()

    def disarm(self) -> None:
        self._stopped.set()

    def watch(self, requests: Iterator[Any]) -> Iterator[Any]:
        self.arm()
        try:
            for request in requests:
                self.arm()
                yield request
        finally:
            self.disarm()
        if self._expired.is_set():
            raise IdleUploadCancelled(f"no message for {self._seconds:g} s; upload cancelled")


class StreamCapacityInterceptor(grpc.ServerInterceptor):
    """Admits streaming RPCs within :class:`StreamLimits`; unary calls pass untouched."""

    def __init__(self, limits: StreamLimits) -> None:
        self._limits = limits
        self._slots = _StreamSlots(limits)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        method = handler_call_details.method.lstrip("/")
        slots = self._slots
        idle_seconds = self._limits.upload_idle_seconds if handler.request_streaming else None

        def admit(context: grpc.ServicerContext) -> str:
            client = _client_key(context)
            try:
                slots.acquire(method, client)
            except ResourceExhausted as error:
                abort_with(context, error)
            return client

        def watched(
            request: Any, context: grpc.ServicerContext
        ) -> tuple[Any, _IdleWatchdog | None]:
            if idle_seconds is None:
                return request, None
            watchdog = _IdleWatchdog(context, idle_seconds, method)
            return watchdog.watch(request), watchdog

        def release(client: str, watchdog: _IdleWatchdog | None) -> None:
            if watchdog is not None:
                watchdog.disarm()
            slots.release(method, client)

        def wrap(behaviour: Callable[..., Any], response_streaming: bool) -> Callable[..., Any]:
            if response_streaming:

                def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    client = admit(context)
                    request, watchdog = watched(request, context)
                    try:
                        yield from behaviour(request, context)
                    finally:
                        release(client, watchdog)

                return stream

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                client = admit(context)
                request, watchdog = watched(request, context)
                try:
                    return behaviour(request, context)
                finally:
                    release(client, watchdog)

            return unary

        return rewrap_handler(handler, wrap)
