"""The verified caller of the RPC being handled.

The authorisation interceptor (:mod:`shared.grpc.auth`) sets it before a handler runs; handlers
read it with :func:`current_principal` or, to record who did something, :func:`caller_name`.
A sync gRPC server runs each RPC on one pool thread from start to end, so a context variable
set around the handler is exactly the call's scope.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

#: How the caller proved who it is.
Proof = Literal["certificate", "token", "proxy"]


@dataclass(frozen=True)
class Principal:
    """A caller whose identity the server verified, and the roles it holds."""

    name: str
    roles: frozenset[str]
    proof: Proof


_current: ContextVar[Principal | None] = ContextVar("tuneline_principal", default=None)


def current_principal() -> Principal | None:
    """The verified caller of this RPC; ``None`` when the server runs without auth."""
    return _current.get()


def caller_name(declared: str) -> str:
    """Who to record as having done this: the verified caller, else what the request declares.

    The declared value only counts when the server runs without auth (``AUTH_MODE=insecure``);
    with auth on there is always a principal, so a request cannot name someone else.
    """
    principal = _current.get()
    return principal.name if principal is not None else declared


@contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    """Make ``principal`` the current caller for the duration of the block."""
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)
