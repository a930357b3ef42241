"""Domain errors: what went wrong, in the domain's words, with no transport attached.

Handlers raise these; the gRPC layer (`shared.grpc.errors`) is the one place that turns them
into status codes with rich details, so a handler never imports grpc and every service maps
the same error to the same code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: ``field`` is a path into the request (e.g. ``adapter.rank``)."""

    field: str
    description: str
    reason: str = ""


class DomainError(Exception):
    """Base of every error a handler may raise on purpose."""

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    """The request is malformed; the caller must change it. Carries field violations."""

    def __init__(
        self,
        message: str,
        violations: Iterable[FieldViolation] = (),
        *,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.violations: tuple[FieldViolation, ...] = tuple(violations)


class NotFound(DomainError):
    """The named resource does not exist."""

    def __init__(self, resource_type: str, resource_name: str) -> None:
        super().__init__(f"{resource_type} {resource_name!r} not found")
        self.resource_type = resource_type
        self.resource_name = resource_name


class AlreadyExists(DomainError):
    """A resource with that name exists already and the request may not overwrite it."""

    def __init__(self, resource_type: str, resource_name: str) -> None:
        super().__init__(f"{resource_type} {resource_name!r} already exists")
        self.resource_type = resource_type
        self.resource_name = resource_name


@dataclass(frozen=True)
class PreconditionViolation:
    """Why the system is not in a state that allows the operation (google.rpc style)."""

    type: str
    subject: str
    description: str


class FailedPrecondition(DomainError):
    """The request is valid but the system's state forbids it right now."""

    def __init__(
        self,
        message: str,
        violations: Iterable[PreconditionViolation] = (),
        *,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.violations: tuple[PreconditionViolation, ...] = tuple(violations)


class Aborted(FailedPrecondition):
    """A compare-and-set lost: the caller's view of the resource is stale (e.g. an expected
    revision that is no longer current). Nothing changed; re-read and decide again.

    A kind of failed precondition, mapped to ABORTED as AIP-154 asks for a stale etag and the
    gRPC status guide asks for a failed test-and-set ("retry at a higher level").
    """


class ResourceExhausted(DomainError):
    """A limit was hit (upload size, queue capacity)."""


class Unavailable(DomainError):
    """A dependency is down; the caller may retry later."""


class Unauthenticated(DomainError):
    """The caller did not prove who it is (no certificate or token, or a bad token)."""


class PermissionDenied(DomainError):
    """The caller is known but none of its roles allows this call."""
