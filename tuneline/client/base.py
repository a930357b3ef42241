"""What every service client shares: the channel, the call wrapper, pagination."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from shared.grpc import ClientSecurity, create_channel
from shared.grpc.client import retryable_methods
from tuneline.client.errors import from_rpc_error

R = TypeVar("R", bound=Message)
T = TypeVar("T")


class ServiceClient:
    """Base of the per-service clients.

    Give it a ``target`` (``host:port``) and it owns a channel with deadlines and retries, or
    give it an existing ``channel`` to share one. ``timeout`` is the default deadline, in
    seconds, of calls made without one. ``security`` (TLS files, a bearer token) defaults to
    the ``TUNELINE_TLS_*``/``TUNELINE_AUTH_*`` environment. Use as a context manager to close
    the channel.

    Mutations are idempotent by default: every request with a ``request_id`` field gets one
    (a new UUID per call unless the caller chose it), and the channel retries only reads and
    such requests, so a retry after a lost response is applied once.
    """

    #: The proto service this client calls; its safe methods are the channel's retryable ones.
    service: ClassVar[ServiceDescriptor | None] = None

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = 10.0,
        security: ClientSecurity | None = None,
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("pass exactly one of target or channel")
        self._owns_channel = channel is None
        self.channel = channel or create_channel(
            str(target),
            default_timeout=timeout,
            security=security,
            retryable=retryable_methods(self.service) if self.service else None,
        )
        self.timeout = timeout

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., R], request: Any, *, timeout: float | None = None) -> R:
        """Call a unary (or client-streaming) method; RpcErrors become TunelineErrors."""
        request = with_request_id(request)
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def _stream(
        self, method: Callable[..., Iterator[R]], request: Any, *, timeout: float | None = None
    ) -> Iterator[R]:
        """Iterate a server stream (``timeout=None`` here means: no deadline, watch forever)."""
        try:
            yield from method(request, timeout=timeout)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(error) from None

    def _paginate(
        self,
        method: Callable[..., Any],
        request: Any,
        items_field: str,
        *,
        page_size: int = 100,
    ) -> Iterator[Any]:
        """Yield every item of a standard ``List`` method, following ``next_page_token``."""
        request.page_size = request.page_size or page_size
        while True:
            response = self._call(method, request)
            yield from getattr(response, items_field)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token


def with_request_id(request: Any) -> Any:
    """``request`` with a fresh ``request_id`` when it has that field and it is empty.

    A copy: the caller's message is left as it was, so reusing it for another logical call gets
    another id. gRPC's transparent retries resend these same bytes, hence the same id.
    """
    if not isinstance(request, Message):
        return request  # a client stream: its first message carries the id, if any
    if "request_id" not in request.DESCRIPTOR.fields_by_name or request.request_id:  # type: ignore[attr-defined]
        return request
    stamped = type(request)()
    stamped.CopyFrom(request)
    stamped.request_id = uuid.uuid4().hex  # type: ignore[attr-defined]
    return stamped
