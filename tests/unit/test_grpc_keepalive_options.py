"""Keepalive options: every interval a client may be configured with is one servers accept."""

from __future__ import annotations

import annotated_types
import pytest

from shared.grpc.keepalive import (
    MIN_KEEPALIVE_SECONDS,
    client_keepalive_options,
    server_keepalive_options,
)
from shared.settings import CommonSettings


def test_servers_accept_pings_at_twice_the_fastest_allowed_client_rate() -> None:
    (bound,) = [
        m.ge
        for m in CommonSettings.model_fields["grpc_keepalive_seconds"].metadata
        if isinstance(m, annotated_types.Ge)
    ]
    assert bound == MIN_KEEPALIVE_SECONDS, "the setting allows no interval servers refuse"
    fastest_client = dict(client_keepalive_options(MIN_KEEPALIVE_SECONDS, 10))
    for server_interval in (MIN_KEEPALIVE_SECONDS, 30, 3600):
        server = dict(server_keepalive_options(server_interval, 10))
        floor = server["grpc.http2.min_ping_interval_without_data_ms"]
        assert floor * 2 <= fastest_client["grpc.keepalive_time_ms"]
        assert server["grpc.keepalive_permit_without_calls"] == 1


def test_an_interval_servers_would_refuse_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="too many pings"):
        client_keepalive_options(MIN_KEEPALIVE_SECONDS / 2, 10)
    with pytest.raises(ValueError, match="positive"):
        client_keepalive_options(30, 0)
