"""Domain values to and from JSON-compatible data: how job rows store progress and
configuration, and how the supervisor and its workers exchange plans and messages."""

from __future__ import annotations

import types
import typing
from collections import abc
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any


def jsonable(value: Any) -> Any:  # noqa: PLR0911 - one return per kind of value
    """A domain value as JSON-compatible data (enums by value, Decimals as strings)."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {k: jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    return value


def from_jsonable(cls: type[Any], data: Mapping[str, Any]) -> Any:
    """The inverse of :func:`jsonable` for a dataclass ``cls`` (fields missing from ``data``
    keep their defaults, unknown keys are ignored)."""
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _decode(hints[name], data[name]) for name in cls.__dataclass_fields__ if name in data
    }
    return cls(**kwargs)


def _decode(annotation: Any, value: Any) -> Any:  # noqa: PLR0911 - one return per kind of value
    if value is None:
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _decode(next(a for a in args if a is not type(None)), value)
    if origin is tuple:
        return tuple(_decode(args[0], v) for v in value)
    if origin is list:
        return [_decode(args[0], v) for v in value]
    if origin in (dict, abc.Mapping):
        return {k: _decode(args[1], v) for k, v in value.items()}
    if isinstance(annotation, type):
        if issubclass(annotation, StrEnum):
            return annotation(value)
        if annotation is Decimal:
            return Decimal(value)
        if annotation is datetime:
            return datetime.fromisoformat(value)
        if annotation is float:
            return float(value)
        if hasattr(annotation, "__dataclass_fields__"):
            return from_jsonable(annotation, value)
    return value
