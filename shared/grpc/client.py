"""Client channels: a deadline on every call, bounded retries with backoff on UNAVAILABLE.

Retries use gRPC's own retry policy (a service config on the channel), so they are
transparent, bounded and backed off with jitter by the library itself; we only choose the
numbers. A client interceptor puts ``default_timeout`` on any call made without one, because a
call without a deadline can hang forever when a peer stalls (server-streaming watches excepted).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _DefaultDeadline(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Give every call a deadline: the caller's, or the channel's default.

    Server-streaming calls are the exception: in Tuneline they are watches (WatchTrainingJob,
    WatchAlias) that last as long as the caller wants, so a watch without a deadline is left
    without one. A peer that dies still ends the stream (UNAVAILABLE).
    """

    def __init__(self, default_timeout: float) -> None:
        self._default = default_timeout

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if details.timeout is not None:
            return details
        return _CallDetails(  # type: ignore[return-value]
            details.method,
            self._default,
            details.metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(details, request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._details(details), requests)


def retry_service_config(
    *, max_attempts: int = 4, initial_backoff: float = 0.1, max_backoff: float = 2.0
) -> str:
    """The JSON service config that retries UNAVAILABLE on every method of the channel.

    ``max_attempts=1`` means no retries (gRPC itself refuses a retry policy below 2).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts counts the first try and must be at least 1")
    if min(initial_backoff, max_backoff) < 0.001:
        raise ValueError("gRPC needs backoffs of at least 1 ms")
    if max_attempts == 1:
        return json.dumps({"methodConfig": [{"name": [{}]}]})
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{}],  # every service, every method
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": f"{initial_backoff}s",
                        "maxBackoff": f"{max_backoff}s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def create_channel(
    target: str,
    *,
    default_timeout: float = 10.0,
    max_attempts: int = 4,
    initial_backoff: float = 0.1,
    max_backoff: float = 2.0,
    max_message_bytes: int = 8 * 1024 * 1024,
) -> grpc.Channel:
    """An insecure channel to ``target`` (``host:port``) with deadlines and retries built in.

    ``max_attempts`` counts the first try (gRPC caps it at 5).
    """
    channel = grpc.insecure_channel(
        target,
        options=[
            ("grpc.enable_retries", 1),
            (
                "grpc.service_config",
                retry_service_config(
                    max_attempts=max_attempts,
                    initial_backoff=initial_backoff,
                    max_backoff=max_backoff,
                ),
            ),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    return grpc.intercept_channel(channel, _DefaultDeadline(default_timeout))
