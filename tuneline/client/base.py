"""What every service client shares: the channel, the call wrapper, pagination."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from shared.grpc import create_channel
from tuneline.client.errors import from_rpc_error

R = TypeVar("R", bound=Message)
T = TypeVar("T")


class ServiceClient:
    """Base of the per-service clients.

    Give it a ``target`` (``host:port``) and it owns a channel with deadlines and retries, or
    give it an existing ``channel`` to share one. ``timeout`` is the default deadline, in
    seconds, of calls made without one. Use as a context manager to close the channel.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = 10.0,
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("pass exactly one of target or channel")
        self._owns_channel = channel is None
        self.channel = channel or create_channel(str(target), default_timeout=timeout)
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
