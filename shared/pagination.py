"""Standard ``List`` pagination (AIP-158), the same in every service.

* ``page_size``: 0 means :data:`DEFAULT_PAGE_SIZE`, values above :data:`MAX_PAGE_SIZE` are coerced
  down to it, a negative value is an ``INVALID_ARGUMENT``.
* ``page_token``: opaque to callers. Inside it is the keyset position of the last item returned
  (e.g. its create time and name) plus a fingerprint of the other request fields, so a token
  replayed with a different filter or parent is refused instead of silently paging something
  else. Keyset positions (not offsets) keep pages stable while new items arrive.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence

from shared.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

#: A keyset position: JSON scalars, e.g. ``["2025-01-01T00:00:00+00:00", "datasets/a"]``.
Position = Sequence[str | int | float]


def resolve_page_size(page_size: int, *, field: str = "page_size") -> int:
    """The page size to use for a request's ``page_size``."""
    if page_size < 0:
        raise InvalidArgument(
            "page_size must not be negative",
            [FieldViolation(field, f"{page_size} is negative; use 0 for the default", "NEGATIVE")],
        )
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


def _fingerprint(query: Mapping[str, str]) -> str:
    canonical = json.dumps(dict(query), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(query: Mapping[str, str], position: Position) -> str:
    """A token for the page after ``position``, valid only with the same ``query`` fields."""
    body = json.dumps({"q": _fingerprint(query), "after": list(position)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_page_token(
    token: str, query: Mapping[str, str], *, field: str = "page_token"
) -> list[str | int | float] | None:
    """The position a token continues after; ``None`` for an empty token (the first page).

    Raises :class:`InvalidArgument` for a token that is not one of ours, or that was issued
    for different request fields.
    """
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        fingerprint, position = body["q"], body["after"]
        if not isinstance(position, list) or not isinstance(fingerprint, str):
            raise TypeError("malformed token body")
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise InvalidArgument(
            "page_token is not a token this service issued",
            [FieldViolation(field, "not a valid page token", "INVALID_PAGE_TOKEN")],
        ) from None
    if fingerprint != _fingerprint(query):
        raise InvalidArgument(
            "page_token was issued for a different request",
            [
                FieldViolation(
                    field,
                    "the token belongs to a request with other fields; repeat them unchanged",
                    "PAGE_TOKEN_MISMATCH",
                )
            ],
        )
    return position
