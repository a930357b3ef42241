"""Keepalive pings that clients and servers agree on.

Both ends ping: a server pings idle connections (a watcher whose host vanished frees its stream
slot), a client pings while a call is open (a watch on a silently dropped connection ends
instead of hanging). gRPC's servers police the clients' pings: a ping that comes sooner than the
server's minimum interval (``grpc.http2.min_ping_interval_without_data_ms``) after the previous
one, while the server has sent no data, is a strike, and a client with more than two strikes is
sent GOAWAY ``too_many_pings`` and loses its calls. A watch on a quiet alias sends no data for
hours, so every client ping of it is judged.

The servers' floor used to be set under a name gRPC does not know
(``grpc.http2.min_recv_ping_interval_without_data_ms``), so gRPC's default of five minutes
applied and a quiet watch was cut off after three client pings. Nor is the floor derived from
the server's own interval, which may be configured apart from the clients' (the CLI's default
against a cluster's setting): it is half the shortest interval any Tuneline client may use,
:data:`MIN_KEEPALIVE_SECONDS`, leaving room for timer jitter. Whatever either end is configured
with, a client's pings are never too many.
"""

from __future__ import annotations

#: The shortest keepalive interval a client may ping at (``TUNELINE_GRPC_KEEPALIVE_SECONDS``'s
#: lower bound). Servers accept pings twice as often, so timer jitter is never a strike.
MIN_KEEPALIVE_SECONDS = 1.0
#: The ping interval servers accept from clients while they send no data.
SERVER_MIN_PING_INTERVAL_MS = int(MIN_KEEPALIVE_SECONDS * 1000) // 2


def _interval_ms(keepalive_seconds: float) -> int:
    if keepalive_seconds < MIN_KEEPALIVE_SECONDS:
        raise ValueError(
            f"a keepalive interval under {MIN_KEEPALIVE_SECONDS} s would be refused by servers "
            f"as too many pings, got {keepalive_seconds}"
        )
    return int(keepalive_seconds * 1000)


def _timeout_ms(timeout_seconds: float) -> int:
    if timeout_seconds <= 0:
        raise ValueError(f"the keepalive timeout must be positive, got {timeout_seconds}")
    return int(timeout_seconds * 1000)


def client_keepalive_options(
    keepalive_seconds: float, timeout_seconds: float
) -> list[tuple[str, int]]:
    """Ping every ``keepalive_seconds`` while a call is open (never on an idle channel: an idle
    client has nothing to lose), as often as needed without data, and give up on the connection
    when a ping is not answered within ``timeout_seconds``."""
    return [
        ("grpc.keepalive_time_ms", _interval_ms(keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", _timeout_ms(timeout_seconds)),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_keepalive_options(
    keepalive_seconds: float, timeout_seconds: float
) -> list[tuple[str, int]]:
    """Ping clients on idle connections every ``keepalive_seconds`` (dropping them after
    ``timeout_seconds`` without an answer), and accept the pings of any client built by
    :func:`client_keepalive_options`, whatever its interval."""
    return [
        ("grpc.keepalive_time_ms", _interval_ms(keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", _timeout_ms(timeout_seconds)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_pings_without_data", 0),
    ]
