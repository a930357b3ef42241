"""Errors a client sees: one exception class per gRPC status, with the rich details decoded."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class Violation:
    """A field (``BadRequest``) or precondition (``PreconditionFailure``) violation."""

    field: str
    description: str
    reason: str = ""


@dataclass
class TunelineError(Exception):
    """A failed call: the status code, its message and the decoded details."""

    code: grpc.StatusCode
    message: str
    violations: list[Violation] = field(default_factory=list)
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    resource_name: str = ""

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.violations:
            text += "".join(f"\n  - {v.field}: {v.description}" for v in self.violations)
        return text


class InvalidArgumentError(TunelineError):
    """The request was malformed; ``violations`` says which fields and why."""


class NotFoundError(TunelineError):
    """The named resource does not exist."""


class AlreadyExistsError(TunelineError):
    """A resource with that name exists already."""


class FailedPreconditionError(TunelineError):
    """The system's state forbids the operation now; ``violations`` says why."""


class AbortedError(TunelineError):
    """A conditional write lost (e.g. a stale ``expected_revision``): nothing changed. Re-read
    (``metadata`` has ``current_revision``) and decide again; do not blindly retry."""


class ResourceExhaustedError(TunelineError):
    """A server limit was hit (e.g. too many open streams); ``metadata`` names the cap."""


class DeadlineExceededError(TunelineError):
    """The call did not finish within its deadline."""


class UnavailableError(TunelineError):
    """The service could not be reached (after the channel's retries)."""


_BY_CODE: dict[grpc.StatusCode, type[TunelineError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def from_rpc_error(error: grpc.RpcError) -> TunelineError:
    """Decode a ``grpc.RpcError`` (and its ``google.rpc.Status`` details) into an exception."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    exc = _BY_CODE.get(code, TunelineError)(code=code, message=message)
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return exc
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            exc.violations += [
                Violation(v.field, v.description, v.reason) for v in bad_request.field_violations
            ]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            exc.violations += [
                Violation(v.subject, v.description, v.type) for v in failure.violations
            ]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            exc.reason = info.reason
            exc.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            resource = error_details_pb2.ResourceInfo()
            detail.Unpack(resource)
            exc.resource_name = resource.resource_name
    return exc
