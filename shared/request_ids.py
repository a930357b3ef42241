"""Idempotency keys of the "set a policy" RPCs: the rules every service applies the same way.

A client (the SDK fills one in when the caller does not) sends a ``request_id`` with a
mutation so the channel may retry it after a lost response: the server records each key it
applied with the resource it was about, and a repeat with that key changes nothing and answers
with the resource as stored. A key reused for another resource is a client bug, refused with
INVALID_ARGUMENT (reason REQUEST_ID_REUSED) rather than passed off as a retry. Where the keys
are stored is each service's own table; these are the shared checks.
"""

from __future__ import annotations

from shared.errors import FieldViolation, InvalidArgument

#: The longest ``request_id`` a policy setter accepts (a UUID is 32 or 36 characters).
REQUEST_ID_MAX_LENGTH = 128


def request_id_violations(request_id: str) -> list[FieldViolation]:
    """What is wrong with ``request_id`` (empty means "no key": nothing to dedupe)."""
    if len(request_id) > REQUEST_ID_MAX_LENGTH:
        return [
            FieldViolation("request_id", f"at most {REQUEST_ID_MAX_LENGTH} characters", "TOO_LONG")
        ]
    return []


def refuse_reused_request_id(applied_to: str, subject: str) -> None:
    """INVALID_ARGUMENT when a key applied to ``applied_to`` comes back about ``subject``."""
    if applied_to != subject:
        raise InvalidArgument(
            "request_id was already used for another policy",
            [FieldViolation("request_id", f"already used for {applied_to}", "REQUEST_ID_REUSED")],
        )
