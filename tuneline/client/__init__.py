"""The typed Python client SDK: one class per service over the generated stubs.

Deadlines and retries are built in (``shared.grpc.create_channel``), ``List`` methods are
iterators over every page, and errors are :class:`~tuneline.client.errors.TunelineError`
subclasses carrying the gRPC status details. The CLI and the services themselves (e.g. the
evaluator asking the registry for production) use these classes; nobody else builds stubs.
"""

from tuneline.client.base import ServiceClient
from tuneline.client.errors import (
    AbortedError,
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    TunelineError,
    UnavailableError,
)

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "ServiceClient",
    "TunelineError",
    "UnavailableError",
]
