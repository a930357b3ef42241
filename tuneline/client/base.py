"""What every service client shares: the channel, the call wrapper, pagination."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable, Collection, Iterator
from typing import Any, ClassVar, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from shared.grpc import ClientSecurity, create_channel
from shared.grpc.client import retryable_methods
from tuneline.client.errors import from_rpc_error

R = TypeVar("R", bound=Message)
T = TypeVar("T")

#: How many items every ``list_*`` method asks for per page unless told otherwise (the
#: server may send fewer; the iterator follows ``next_page_token`` either way).
DEFAULT_PAGE_SIZE = 100
#: How long ``wait()`` waits for a terminal state unless told otherwise, and how often it looks.
DEFAULT_WAIT_TIMEOUT = 600.0
DEFAULT_POLL_SECONDS = 0.5


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
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[Any]:
        """Yield every item of a standard ``List`` method, following ``next_page_token``."""
        request.page_size = request.page_size or page_size or DEFAULT_PAGE_SIZE
        while True:
            response = self._call(method, request)
            yield from getattr(response, items_field)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def _wait_until_terminal(
        self,
        get: Callable[[str], R],
        name: str,
        terminal_states: Collection[int],
        *,
        timeout: float,
        poll_seconds: float,
        state_field: str = "state",
    ) -> R:
        """Read ``name`` with ``get`` until its ``state_field`` is one of ``terminal_states``.

        The ``wait()`` of every client whose resource ends in a terminal state; raises
        ``TimeoutError`` (with the last state seen) when ``timeout`` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        while True:
            resource = get(name)
            state = getattr(resource, state_field)
            if state in terminal_states:
                return resource
            if time.monotonic() >= deadline:
                states = resource.DESCRIPTOR.fields_by_name[state_field].enum_type
                seen = states.values_by_number[state].name if states else state
                raise TimeoutError(f"{name} is still {seen} after {timeout:g} s")
            time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


class DeprecatedAlias:
    """An earlier SDK's method name, kept so old callers work: warns, then is ``new``.

    >>> class RegistryClient(ServiceClient):
    ...     promote = DeprecatedAlias("promote_checkpoint")
    """

    def __init__(self, new: str) -> None:
        self.new = new
        self.old = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        warnings.warn(
            f"{type(instance).__name__}.{self.old} is deprecated: use {self.new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(instance, self.new)


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
