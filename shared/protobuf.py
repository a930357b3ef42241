"""Domain values ⇄ protobuf scalars, the same way in every service.

The conversions every service's adapters need between its domain types and the contracts:

* enums: a domain ``StrEnum`` whose values are the proto value names without their prefix
  (``AdapterMethod.DORA`` ⇄ ``ADAPTER_METHOD_DORA``), with ``None`` ⇄ 0 (``*_UNSPECIFIED``);
* ``google.protobuf.Timestamp`` ⇄ timezone-aware UTC ``datetime``, with ``None`` ⇄ unset;
* ``google.protobuf.Duration`` ⇄ seconds as a ``float``, with ``None`` ⇄ unset.

Reading an unknown enum number has two flavours: :func:`enum_from_proto` raises (for stored
resources and events, where an unknown number is a broken producer) and
:func:`enum_field_from_proto` records a field violation (for requests, where it is the caller's
mistake and every bad field should be reported at once).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar, cast, overload

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from shared.errors import FieldViolation, InvalidArgument

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

E = TypeVar("E", bound=StrEnum)
#: The number type of one generated proto enum (a ``NewType`` of ``int`` in the stubs).
V = TypeVar("V", bound=int)

#: The ``FieldViolation.reason`` of an enum number the server does not know.
UNKNOWN_ENUM_VALUE = "UNKNOWN_ENUM_VALUE"

#: A float: durations are float seconds in the domain, so both directions use float arithmetic.
_NANOS_PER_SECOND = 1e9


# -- enums ----------------------------------------------------------------------------------------


class UnknownEnumNumber(InvalidArgument, ValueError):
    """An enum number the contract does not define, or one the domain has no value for.

    In an event it is a malformed event: being an :class:`~shared.errors.InvalidArgument`, the
    consumer dead-letters it at once instead of retrying it as an unknown failure. It is also
    a ``ValueError``, which is what callers caught before it existed.
    """


def enum_to_proto(enum_type: _EnumTypeWrapper[V], prefix: str, value: StrEnum | None) -> V:
    """The proto number of a domain enum value: ``value.value`` prefixed by ``prefix`` and ``_``.

    ``None`` → 0 (the ``*_UNSPECIFIED`` value). Raises ``ValueError`` when the proto enum has no
    such name (the domain enum and the contract disagree: a programming error). For example
    ``enum_to_proto(common_pb2.AdapterMethod, "ADAPTER_METHOD", AdapterMethod.DORA)`` is
    ``ADAPTER_METHOD_DORA``.
    """
    if value is None:
        return cast(V, 0)
    return enum_type.Value(f"{prefix}_{value.value}")


def enum_from_proto(
    enum_type: _EnumTypeWrapper[V], prefix: str, number: int, domain: type[E]
) -> E | None:
    """The domain value of a proto enum number: the value name without ``prefix`` and ``_``.

    0 (``*_UNSPECIFIED``) → ``None``. Raises :class:`UnknownEnumNumber` (a ``ValueError``) for a
    number the proto enum does not define, or one whose name the domain enum lacks; use
    :func:`enum_field_from_proto` to report that as a request's field violation instead.
    """
    if number == 0:
        return None
    described = enum_type.DESCRIPTOR.values_by_number.get(number)
    if described is None:
        raise UnknownEnumNumber(f"{number} is not a {enum_type.DESCRIPTOR.name} value")
    try:
        return domain(described.name.removeprefix(f"{prefix}_"))
    except ValueError:
        raise UnknownEnumNumber(
            f"{described.name} has no {domain.__name__} counterpart here"
        ) from None


def enum_field_from_proto(
    enum_type: _EnumTypeWrapper[V],
    prefix: str,
    number: int,
    domain: type[E],
    *,
    field: str,
    violations: list[FieldViolation],
) -> E | None:
    """Like :func:`enum_from_proto` for a request field: an unknown number appends a
    ``FieldViolation(field, …, "UNKNOWN_ENUM_VALUE")`` to ``violations`` and gives ``None``,
    so the caller can collect every bad field before refusing the request."""
    try:
        return enum_from_proto(enum_type, prefix, number, domain)
    except ValueError:
        violations.append(
            FieldViolation(
                field,
                f"{number} is not a known {enum_type.DESCRIPTOR.name} value",
                UNKNOWN_ENUM_VALUE,
            )
        )
        return None


# -- timestamps -----------------------------------------------------------------------------------


@overload
def timestamp_from_datetime(value: datetime) -> Timestamp: ...
@overload
def timestamp_from_datetime(value: None) -> None: ...
@overload
def timestamp_from_datetime(value: datetime | None) -> Timestamp | None: ...
def timestamp_from_datetime(value: datetime | None) -> Timestamp | None:
    """A new ``Timestamp`` for ``value``; ``None`` → ``None`` (a message field left unset).

    An aware datetime is converted to UTC; a naive one is read as UTC already (every time the
    services store is UTC, and SQLite hands them back naive).
    """
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def set_timestamp(target: Timestamp, value: datetime | None) -> None:
    """Write ``value`` into a message's ``Timestamp`` field in place; ``None`` leaves it as is
    (unset on a new message). Same conversion as :func:`timestamp_from_datetime`."""
    if value is not None:
        target.FromDatetime(value)


def datetime_from_timestamp(message: Message, field: str) -> datetime | None:
    """The aware UTC datetime of ``message.<field>`` (a ``Timestamp``); ``None`` when unset.

    Presence is read with ``HasField``, so an unset field is ``None`` and not the epoch.
    """
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


# -- durations ------------------------------------------------------------------------------------


def duration_from_seconds(seconds: float) -> Duration:
    """A ``Duration`` of ``seconds``, to the nanosecond (fractions below one are truncated)."""
    span = Duration()
    span.FromNanoseconds(int(seconds * _NANOS_PER_SECOND))
    return span


def seconds_from_duration(message: Message, field: str) -> float | None:
    """``message.<field>`` (a ``Duration``) in seconds; ``None`` when the field is unset."""
    if not message.HasField(field):
        return None
    span: Duration = getattr(message, field)
    return span.ToNanoseconds() / _NANOS_PER_SECOND
