"""The one place where domain errors become gRPC statuses with rich details.

Every service's server runs :class:`ErrorMappingInterceptor`, so a handler raises
``InvalidArgument(...)`` and the caller receives ``INVALID_ARGUMENT`` with a
``google.rpc.BadRequest`` listing each field violation — the same way in all five services.
An exception that is not a :class:`~shared.errors.DomainError` is a bug: it is logged with its
traceback and answered as ``INTERNAL`` without leaking internals.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from shared.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

#: ``google.rpc.ErrorInfo.domain`` of every error Tuneline raises.
ERROR_DOMAIN = "tuneline.dev"

_CODES: list[tuple[type[DomainError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (AlreadyExists, code_pb2.ALREADY_EXISTS),
    (Aborted, code_pb2.ABORTED),  # before its base class: the first match wins
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (Unavailable, code_pb2.UNAVAILABLE),
    (Unauthenticated, code_pb2.UNAUTHENTICATED),
    (PermissionDenied, code_pb2.PERMISSION_DENIED),
]


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _reason(error: DomainError) -> str:
    """``InvalidArgument`` → ``INVALID_ARGUMENT``: a stable machine-readable reason."""
    name = type(error).__name__
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()


def to_rpc_status(error: DomainError) -> status_pb2.Status:
    """Build the ``google.rpc.Status`` (code, message, details) for a domain error."""
    code = next((c for cls, c in _CODES if isinstance(error, cls)), code_pb2.UNKNOWN)
    details: list[any_pb2.Any] = []
    if isinstance(error, InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description, reason=v.reason
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    elif isinstance(error, FailedPrecondition):
        details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=v.type, subject=v.subject, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    elif isinstance(error, NotFound | AlreadyExists):
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=error.resource_type,
                    resource_name=error.resource_name,
                    description=error.message,
                )
            )
        )
    details.append(
        _pack(
            error_details_pb2.ErrorInfo(
                reason=_reason(error), domain=ERROR_DOMAIN, metadata=error.metadata
            )
        )
    )
    return status_pb2.Status(code=code, message=error.message, details=details)


def abort_with(context: grpc.ServicerContext, error: BaseException) -> NoReturn:
    """Abort the RPC for ``error``: rich status for domain errors, INTERNAL for bugs."""
    if isinstance(error, DomainError):
        context.abort_with_status(rpc_status.to_status(to_rpc_status(error)))
    log.exception("unhandled error in RPC handler", exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")
    raise AssertionError("unreachable")  # pragma: no cover - abort always raises
