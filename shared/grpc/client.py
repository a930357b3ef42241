"""Client channels: a deadline on every call, bounded retries with backoff on UNAVAILABLE,
TLS or mutual TLS and a bearer token when configured (:class:`ClientSecurity`).

Retries use gRPC's own retry policy (a service config on the channel), so they are
transparent, bounded and backed off with jitter by the library itself; we only choose the
numbers, and which methods: only calls that are safe to repeat (reads, and mutations carrying a
``request_id`` the server dedupes by) are retried. A client interceptor puts
``default_timeout`` on any call made without one, because a call without a deadline can hang
forever when a peer stalls (server-streaming watches excepted).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from shared.grpc.keepalive import client_keepalive_options
from shared.grpc.reloading_channel import ReloadingChannel
from shared.security.files import FileStamp, file_stamp
from shared.security.tls import ReloadingChannelCredentials
from shared.settings import CommonSettings


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

    With a ``bearer`` it also adds ``authorization: Bearer <token>`` to every call. That rides
    on this interceptor rather than a second one (each interceptor layer costs tens of
    microseconds a call) or gRPC call credentials (a plugin run on another thread per call).
    """

    def __init__(self, default_timeout: float, bearer: _BearerHeader | None = None) -> None:
        self._default = default_timeout
        self._bearer = bearer

    def _details(
        self, details: grpc.ClientCallDetails, *, deadline: bool = True
    ) -> grpc.ClientCallDetails:
        timeout = details.timeout
        if deadline and timeout is None:
            timeout = self._default
        metadata: Any = details.metadata
        if self._bearer is not None:
            metadata = [*(metadata or ()), ("authorization", self._bearer.value())]
        elif timeout == details.timeout:
            return details
        return _CallDetails(  # type: ignore[return-value]
            details.method,
            timeout,
            metadata,
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
        return continuation(self._details(details, deadline=False), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._details(details), requests)


@dataclass(frozen=True)
class ClientSecurity:
    """How a channel proves the server's identity and its own: TLS files and a bearer token.

    ``tls=False`` is plaintext (the server must run ``AUTH_MODE=insecure``); a token is only
    ever sent over TLS. The channel looks at the TLS files at most every
    ``reload_check_seconds`` and moves new calls to a channel built from them when they changed
    (:mod:`shared.grpc.reloading_channel`); a token file is looked at on every call.
    """

    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    token: str | None = None
    token_file: Path | None = None
    reload_check_seconds: float = 5.0

    @classmethod
    def from_settings(cls, common: CommonSettings) -> ClientSecurity:
        """TLS as soon as a CA, a client certificate or a token is configured; else plaintext
        (which a server that enforces auth refuses)."""
        if common.auth_mode == "insecure":
            return cls()
        configured = (common.tls_ca_file, common.tls_cert_file, common.auth_token)
        return cls(
            tls=any(v is not None for v in (*configured, common.auth_token_file)),
            ca_file=common.tls_ca_file,
            cert_file=common.tls_cert_file,
            key_file=common.tls_key_file,
            server_name=common.tls_server_name,
            token=common.auth_token,
            token_file=common.auth_token_file,
        )

    @classmethod
    def from_environment(cls) -> ClientSecurity:
        """:meth:`from_settings` of the ``TUNELINE_TLS_*``/``TUNELINE_AUTH_*`` environment."""
        return cls.from_settings(CommonSettings())


class _BearerHeader:
    """``Bearer <token>``, from a fixed token or a token file re-read when it changes."""

    def __init__(self, token: str | None, token_file: Path | None) -> None:
        self._token = token
        self._token_file = token_file
        self._stamp: FileStamp | None = None
        self._header = f"Bearer {token}"

    def value(self) -> str:
        if self._token_file is None:
            return self._header
        stamp = file_stamp(self._token_file)
        if stamp != self._stamp:
            self._header = f"Bearer {self._token_file.read_text().strip()}"
            self._stamp = stamp
        return self._header


#: Method name prefixes of calls that change nothing: repeating them is always safe.
READ_METHOD_PREFIXES = ("Get", "List", "Watch", "Check")
#: Health is on every server; probes and readiness waits may retry it.
HEALTH_METHODS = ("grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch")


def is_safe_to_retry(method: MethodDescriptor) -> bool:
    """A read, or a mutation whose request carries a ``request_id`` (the server dedupes a
    repeat by it, and the SDK always fills it in)."""
    if method.name.startswith(READ_METHOD_PREFIXES):
        return True
    return "request_id" in method.input_type.fields_by_name


def retryable_methods(*services: ServiceDescriptor) -> list[str]:
    """``package.Service/Method`` of every method of ``services`` that is safe to retry, plus
    the health checks."""
    names = [
        f"{service.full_name}/{method.name}"
        for service in services
        for method in service.methods
        if is_safe_to_retry(method)
    ]
    return [*HEALTH_METHODS, *names]


def retry_service_config(
    *,
    max_attempts: int = 4,
    initial_backoff: float = 0.1,
    max_backoff: float = 2.0,
    retryable: Iterable[str] | None = None,
) -> str:
    """The JSON service config that retries UNAVAILABLE, per method.

    ``retryable`` lists the ``package.Service/Method`` names the policy covers (see
    :func:`retryable_methods`); every other method gets no retry policy, so a mutation that
    might have been applied before its response was lost is never sent twice by the channel.
    ``None`` covers every method: only for channels that make nothing but safe calls.
    ``max_attempts=1`` means no retries (gRPC itself refuses a retry policy below 2).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts counts the first try and must be at least 1")
    if min(initial_backoff, max_backoff) < 0.001:
        raise ValueError("gRPC needs backoffs of at least 1 ms")
    if max_attempts == 1:
        return json.dumps({"methodConfig": [{"name": [{}]}]})
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": f"{initial_backoff}s",
        "maxBackoff": f"{max_backoff}s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    if retryable is None:
        # every service, every method
        return json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": policy}]})
    names = []
    for full_name in retryable:
        service, _, method = full_name.lstrip("/").partition("/")
        if not service or not method:
            raise ValueError(f"expected package.Service/Method, got {full_name!r}")
        names.append({"service": service, "method": method})
    config: list[dict[str, Any]] = [{"name": [{}]}]  # the default: no retries
    if names:
        config.append({"name": names, "retryPolicy": policy})
    return json.dumps({"methodConfig": config})


def create_channel(
    target: str,
    *,
    default_timeout: float = 10.0,
    max_attempts: int = 4,
    initial_backoff: float = 0.1,
    max_backoff: float = 2.0,
    max_message_bytes: int = 8 * 1024 * 1024,
    security: ClientSecurity | None = None,
    retryable: Iterable[str] | None = None,
    keepalive_seconds: float | None = None,
    keepalive_timeout_seconds: float | None = None,
) -> grpc.Channel:
    """A channel to ``target`` (``host:port``) with deadlines and retries built in.

    ``max_attempts`` counts the first try (gRPC caps it at 5). ``security`` defaults to the
    ``TUNELINE_TLS_*``/``TUNELINE_AUTH_*`` environment (:meth:`ClientSecurity.from_environment`).
    ``retryable`` restricts retries to those methods (:func:`retryable_methods`); the SDK's
    clients always pass it. While a call is open (a watch, an upload) the channel pings every
    ``keepalive_seconds``, so a dead server or a silently dropped connection is noticed within
    ``keepalive_timeout_seconds`` instead of a watch hanging forever; both default to
    ``TUNELINE_GRPC_KEEPALIVE_SECONDS``/``_TIMEOUT_SECONDS``, and servers accept any interval
    allowed there (:mod:`shared.grpc.keepalive`). With TLS files the channel follows them: a
    renewed certificate is used by the next call, without the caller making a new channel
    (:mod:`shared.grpc.reloading_channel`).
    """
    if security is None:
        security = ClientSecurity.from_environment()
    if keepalive_seconds is None or keepalive_timeout_seconds is None:
        common = CommonSettings()
        keepalive_seconds = keepalive_seconds or common.grpc_keepalive_seconds
        keepalive_timeout_seconds = (
            keepalive_timeout_seconds or common.grpc_keepalive_timeout_seconds
        )
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        (
            "grpc.service_config",
            retry_service_config(
                max_attempts=max_attempts,
                initial_backoff=initial_backoff,
                max_backoff=max_backoff,
                retryable=retryable,
            ),
        ),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        *client_keepalive_options(keepalive_seconds, keepalive_timeout_seconds),
    ]
    bearer = None
    if not security.tls:
        channel = grpc.insecure_channel(target, options=options)
    else:
        if security.server_name:
            options.append(("grpc.ssl_target_name_override", security.server_name))
        credentials = ReloadingChannelCredentials(
            ca_file=security.ca_file, cert_file=security.cert_file, key_file=security.key_file
        )

        def secure_channel(current: grpc.ChannelCredentials) -> grpc.Channel:
            return grpc.secure_channel(target, current, options=options)

        if credentials.files:
            channel = ReloadingChannel(
                secure_channel, credentials, check_seconds=security.reload_check_seconds
            )
        else:  # the system roots and no client certificate: no file to follow
            channel = secure_channel(credentials.initial)
        if security.token is not None or security.token_file is not None:
            bearer = _BearerHeader(security.token, security.token_file)
    return grpc.intercept_channel(channel, _DefaultDeadline(default_timeout, bearer))
