"""Checks every command shares: bounded text fields, request ids seen before, and the alias revision
a caller expects."""

from __future__ import annotations

from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.tables import TriggerKeyRow
from shared.errors import Aborted, FieldViolation, InvalidArgument, PreconditionViolation

MAX_REASON = 1000


def require_text(value: str, field_name: str, *, limit: int = MAX_REASON) -> list[FieldViolation]:
    if not value.strip():
        return [FieldViolation(field_name, "required", "REQUIRED")]
    if len(value) > limit:
        return [FieldViolation(field_name, f"at most {limit} characters", "TOO_LONG")]
    return []


def optional_text(value: str, field_name: str, *, limit: int) -> list[FieldViolation]:
    if len(value) > limit:
        return [FieldViolation(field_name, f"at most {limit} characters", "TOO_LONG")]
    return []


def raise_if(problems: list[FieldViolation], message: str) -> None:
    if problems:
        raise InvalidArgument(message, problems)


def request_key(kind: str, request_id: str) -> str:
    """The trigger key recording a request id of one kind of RPC ("" without one)."""
    return f"{kind}:{request_id}" if request_id else ""


def earlier_request(
    repo: RegistryRepository, model: str, key: str, subject: str
) -> TriggerKeyRow | None:
    """The record of a request already applied with ``key`` (its ``outcome`` is its subject).

    INVALID_ARGUMENT when the key was used for a request about another subject: a client bug
    that must not pass for a retry.
    """
    if not key:
        return None
    earlier = repo.trigger_key(model, key)
    if earlier is not None and earlier.outcome != subject:
        raise InvalidArgument(
            "request_id was already used for another request",
            [
                FieldViolation(
                    "request_id", f"already used for {earlier.outcome}", "REQUEST_ID_REUSED"
                )
            ],
        )
    return earlier


def revision_problems(expected: int | None) -> list[FieldViolation]:
    if expected is not None and expected < 0:
        return [FieldViolation("expected_alias_revision", "must be >= 0", "OUT_OF_RANGE")]
    return []


def check_alias_revision(
    repo: RegistryRepository, model: str, alias: str, expected: int | None
) -> None:
    """Optimistic concurrency: ABORTED when the alias moved since the caller looked.

    Called with the model locked, so nothing can move between this check and the caller's move.
    """
    if expected is None:
        return
    row = repo.get_alias(model, alias)
    current = row.revision if row else 0
    if current == expected:
        return
    subject = f"{model}/aliases/{alias}"
    raise Aborted(
        f"{subject} is at revision {current}, not the expected {expected}: it moved since it "
        "was read; nothing changed (re-read the alias and decide again)",
        [
            PreconditionViolation(
                "ALIAS_REVISION_MISMATCH",
                subject,
                f"expected revision {expected}, current revision {current}",
            )
        ],
        metadata={
            "alias": subject,
            "expected_revision": str(expected),
            "current_revision": str(current),
            "current_checkpoint": row.checkpoint if row else "",
        },
    )
