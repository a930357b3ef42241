"""Keepalive on a real loopback connection: a client's pings never cost it a quiet watch.

gRPC servers answer pings that come too often, while they send no data, with GOAWAY
``too_many_pings``, which ends every call on the connection: a serving replica's WatchAlias on
a quiet alias was cut off that way. Between the client and the server sits a TCP proxy that
reads the HTTP/2 frames going by, so the test waits for the client's pings to have happened
(a positive signal) rather than sleeping, and sees any GOAWAY the server sends.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from shared.grpc import (
    ClientSecurity,
    GrpcServer,
    GrpcServerMetrics,
    build_grpc_server,
    create_channel,
)

pytestmark = pytest.mark.integration

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEADER = struct.Struct(">3sBBI")  # length (24 bit), type, flags, stream id
_PING, _GOAWAY, _ACK = 0x6, 0x7, 0x1

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FrameCounter:
    """HTTP/2 frames seen in one direction of a connection, by type (PING ACKs apart)."""

    def __init__(self, preface: bytes, changed: threading.Condition) -> None:
        self._pending = b""
        self._preface = preface
        self.counts: dict[str, int] = {"ping": 0, "goaway": 0}
        self.changed = changed  # notified on every frame

    def feed(self, data: bytes) -> None:
        self._pending += data
        if self._preface:
            taken = min(len(self._preface), len(self._pending))
            assert self._pending[:taken] == self._preface[:taken], "not an h2c connection"
            self._preface, self._pending = self._preface[taken:], self._pending[taken:]
        while len(self._pending) >= _FRAME_HEADER.size:
            length, kind, flags, _ = _FRAME_HEADER.unpack_from(self._pending)
            size = _FRAME_HEADER.size + int.from_bytes(length, "big")
            if len(self._pending) < size:
                return
            self._pending = self._pending[size:]
            with self.changed:
                if kind == _PING and not flags & _ACK:
                    self.counts["ping"] += 1
                elif kind == _GOAWAY:
                    self.counts["goaway"] += 1
                self.changed.notify_all()


class FrameCountingProxy:
    """One client connection relayed to ``upstream``, its frames counted both ways."""

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._changed = threading.Condition()
        self.from_client = FrameCounter(_PREFACE, self._changed)
        self.from_server = FrameCounter(b"", self._changed)
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, name="h2-proxy", daemon=True).start()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:  # closed before any client came
            return
        server = socket.create_connection(("127.0.0.1", self._upstream))
        self._sockets += [client, server]
        for source, sink, counter in (
            (client, server, self.from_client),
            (server, client, self.from_server),
        ):
            threading.Thread(
                target=self._pump, args=(source, sink, counter), name="h2-pump", daemon=True
            ).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, counter: FrameCounter) -> None:
        try:
            while data := source.recv(65536):
                counter.feed(data)
                sink.sendall(data)
        except OSError:
            pass  # the other side closed
        finally:
            with closing(sink):
                pass

    def wait_for_pings_or_goaway(self, pings: int, timeout: float) -> None:
        """Until the client has sent ``pings`` pings or the server a GOAWAY."""
        with self._changed:
            seen = self._changed.wait_for(
                lambda: (
                    self.from_client.counts["ping"] >= pings
                    or self.from_server.counts["goaway"] > 0
                ),
                timeout,
            )
        assert seen, f"no GOAWAY, but only {self.from_client.counts['ping']} pings in {timeout} s"

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


@contextmanager
def _health_watch_through_proxy(
    server_keepalive_seconds: float, client_keepalive_seconds: float
) -> Iterator[tuple[GrpcServer, FrameCountingProxy, Iterator[health_pb2.HealthCheckResponse]]]:
    server = build_grpc_server(
        host="127.0.0.1",
        port=0,
        services=[],
        metrics=GrpcServerMetrics(CollectorRegistry()),
        keepalive_seconds=server_keepalive_seconds,
    )
    server.start()
    proxy = FrameCountingProxy(server.port)
    channel = create_channel(
        proxy.target, security=ClientSecurity(), keepalive_seconds=client_keepalive_seconds
    )
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        yield server, proxy, watch
    finally:
        channel.close()
        proxy.close()
        server.stop(grace=0)


@pytest.mark.parametrize(
    "server_keepalive_seconds",
    [1.0, 60.0],
    ids=["server-pings-as-often", "server-pings-rarely"],
)
def test_a_quiet_watch_outlives_many_client_keepalive_pings(
    server_keepalive_seconds: float,
) -> None:
    """A watch that receives nothing while the client pings every second: more pings than
    gRPC's two strikes go by, and the stream still delivers the next change, never GOAWAYed.
    Whatever interval the server itself pings at, it accepts the client's."""
    with _health_watch_through_proxy(server_keepalive_seconds, 1.0) as (server, proxy, watch):
        assert next(watch).status == SERVING
        proxy.wait_for_pings_or_goaway(5, timeout=30)
        assert proxy.from_server.counts["goaway"] == 0, "the server refused the client's pings"
        server.health.set("", NOT_SERVING)
        assert next(watch).status == NOT_SERVING
