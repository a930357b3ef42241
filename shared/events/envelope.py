"""The event envelope: CloudEvents' Kafka binding in binary mode, protobuf payload.

A record on topic ``tuneline.trainer.v1.CheckpointReady`` carries

* key: the resource name the event is about (``trainingJobs/j1/checkpoints/c3``), so events
  about one resource stay ordered within a partition;
* headers ``ce_specversion``, ``ce_id``, ``ce_source``, ``ce_type``, ``ce_time``,
  ``ce_subject``, ``content-type: application/protobuf`` and ``traceparent`` (W3C);
* value: the serialized event message.

The topic and ``ce_type`` are both the message's full protobuf name, so a consumer decodes by
``ce_type`` without guessing.
"""

from __future__ import annotations

import builtins
import contextvars
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.message import Message

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/protobuf"
DLQ_SUFFIX = ".dlq"
#: The header of a dead letter sent without its value (too large to send whole with the
#: ``dlq_*`` headers added): the value's size and sha256. The original stays on its topic.
DLQ_VALUE_OMITTED_HEADER = "dlq_value_omitted"

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

#: The longest ``ce_id`` accepted: the width of the event-id columns (``shared.events.tables``).
MAX_EVENT_ID_LENGTH = 64
#: What a ``ce_id`` may contain: UUIDs and other printable, unambiguous keys. Anything else (or
#: longer) is refused at decode time, so it goes to the DLQ instead of failing the insert of
#: its applied-marker on every redelivery.
_EVENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=/-]*$")

#: The trace the current handler runs in; events it publishes continue that trace.
current_traceparent: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_traceparent", default=None
)

M = TypeVar("M", bound=Message)


class EnvelopeError(ValueError):
    """A Kafka record that is not a valid Tuneline CloudEvent."""


def topic_for(message: Message | type[Message]) -> str:
    """The topic of an event type: its full protobuf name."""
    return str(message.DESCRIPTOR.full_name)


def dlq_topic_for(topic: str) -> str:
    """Where messages that keep failing on ``topic`` go."""
    return topic + DLQ_SUFFIX


def check_event_id(event_id: str) -> None:
    """Raise :class:`EnvelopeError` unless ``event_id`` fits the event-id columns."""
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        raise EnvelopeError(
            f"ce_id is {len(event_id)} characters long; at most {MAX_EVENT_ID_LENGTH} are allowed"
        )
    if not _EVENT_ID.match(event_id):
        raise EnvelopeError(
            f"ce_id {event_id[:80]!r} must be letters, digits and . _ : @ + = / - "
            "(starting with a letter or digit)"
        )


def child_traceparent(parent: str | None = None) -> str:
    """A W3C ``traceparent`` continuing ``parent``'s trace with a new span id, or a new trace."""
    match = _TRACEPARENT.match(parent or "")
    trace_id = match.group(1) if match else secrets.token_hex(16)
    flags = match.group(3) if match else "01"
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


@dataclass(frozen=True)
class Envelope:
    """One event as it travels: CloudEvents attributes plus the protobuf payload bytes."""

    id: str
    source: str
    type: str
    subject: str
    time: datetime
    payload: bytes
    traceparent: str = ""
    extra_headers: tuple[tuple[str, bytes], ...] = field(default=())

    @property
    def topic(self) -> str:
        return self.type

    @property
    def key(self) -> bytes:
        return self.subject.encode()

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers in CloudEvents binary mode."""
        headers = [
            ("ce_specversion", SPEC_VERSION.encode()),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_subject", self.subject.encode()),
            ("ce_time", self.time.astimezone(UTC).isoformat().replace("+00:00", "Z").encode()),
            ("content-type", CONTENT_TYPE.encode()),
        ]
        if self.traceparent:
            headers.append(("traceparent", self.traceparent.encode()))
        headers.extend(self.extra_headers)
        return headers

    def decode(self, message_type: builtins.type[M]) -> M:
        """Parse the payload as ``message_type``; raises :class:`EnvelopeError` if it is not."""
        if message_type.DESCRIPTOR.full_name != self.type:
            raise EnvelopeError(f"ce_type {self.type!r} is not {message_type.DESCRIPTOR.full_name}")
        message = message_type()
        try:
            message.ParseFromString(self.payload)
        except Exception as error:
            raise EnvelopeError(f"payload is not a valid {self.type}: {error}") from error
        return message

    @classmethod
    def wrap(
        cls,
        message: Message,
        *,
        source: str,
        subject: str,
        event_id: str | None = None,
        time: datetime | None = None,
        traceparent: str | None = None,
    ) -> Envelope:
        """Envelope a new event; the trace continues the current handler's, if any."""
        if not subject:
            raise ValueError("an event needs a subject: the resource name it is about")
        return cls(
            id=event_id or str(uuid.uuid4()),
            source=source,
            type=topic_for(message),
            subject=subject,
            time=time or datetime.now(UTC),
            payload=message.SerializeToString(deterministic=True),
            traceparent=traceparent or child_traceparent(current_traceparent.get()),
        )

    @classmethod
    def from_headers(
        cls, headers: Iterable[tuple[str, bytes | None]], payload: bytes | None
    ) -> Envelope:
        """Read an envelope back from a Kafka record's headers and value."""
        found: dict[str, str] = {}
        for name, value in headers:
            if value is not None and name not in found:
                found[name] = value.decode("utf-8", errors="replace")
        missing = [
            h
            for h in ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time")
            if h not in found
        ]
        if missing:
            raise EnvelopeError(f"missing CloudEvents headers: {', '.join(missing)}")
        if found["ce_specversion"] != SPEC_VERSION:
            raise EnvelopeError(f"unsupported ce_specversion {found['ce_specversion']!r}")
        if found.get("content-type", CONTENT_TYPE) != CONTENT_TYPE:
            raise EnvelopeError(f"unsupported content-type {found['content-type']!r}")
        check_event_id(found["ce_id"])
        try:
            time = datetime.fromisoformat(found["ce_time"].replace("Z", "+00:00"))
        except ValueError as error:
            raise EnvelopeError(f"ce_time is not RFC 3339: {found['ce_time']!r}") from error
        if time.tzinfo is None:
            raise EnvelopeError(f"ce_time has no UTC offset: {found['ce_time']!r}")
        return cls(
            id=found["ce_id"],
            source=found["ce_source"],
            type=found["ce_type"],
            subject=found.get("ce_subject", ""),
            time=time,
            payload=payload or b"",
            traceparent=found.get("traceparent", ""),
        )


def header_map(headers: Sequence[tuple[str, bytes | None]]) -> Mapping[str, bytes | None]:
    """Headers as a dict (first value wins), for tests and diagnostics."""
    result: dict[str, bytes | None] = {}
    for name, value in headers:
        result.setdefault(name, value)
    return result
