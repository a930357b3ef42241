"""The CloudEvents (Kafka binary mode) envelope around protobuf event payloads.

Most tests wrap well-known protobuf types (``Timestamp``, ``Struct``) so that they do not
depend on generated Tuneline code; one test wraps a generated Tuneline event when the
generated package is present.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from shared.events.envelope import (
    CONTENT_TYPE,
    SPEC_VERSION,
    Envelope,
    EnvelopeError,
    child_traceparent,
    current_traceparent,
    dlq_topic_for,
    header_map,
    topic_for,
)

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _message() -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123)


def _wrap(**overrides: object) -> Envelope:
    kwargs: dict[str, object] = {"source": "tuneline/dataset", "subject": "datasets/d1"}
    kwargs.update(overrides)
    return Envelope.wrap(_message(), **kwargs)  # type: ignore[arg-type]


def _headers_without(envelope: Envelope, name: str) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in envelope.headers() if k != name]


def _replace_header(envelope: Envelope, name: str, value: bytes) -> list[tuple[str, bytes]]:
    return [(k, value if k == name else v) for k, v in envelope.headers()]


def test_topic_is_full_protobuf_name_and_dlq_adds_suffix() -> None:
    assert topic_for(timestamp_pb2.Timestamp) == "google.protobuf.Timestamp"
    assert topic_for(_message()) == "google.protobuf.Timestamp"
    assert topic_for(struct_pb2.Struct()) == "google.protobuf.Struct"
    assert dlq_topic_for("tuneline.trainer.v1.CheckpointReady") == (
        "tuneline.trainer.v1.CheckpointReady.dlq"
    )


def test_wrap_fills_cloudevents_attributes() -> None:
    before = datetime.now(UTC)
    envelope = _wrap()
    after = datetime.now(UTC)

    assert envelope.type == "google.protobuf.Timestamp"
    assert envelope.topic == envelope.type
    assert envelope.source == "tuneline/dataset"
    assert envelope.subject == "datasets/d1"
    assert envelope.key == b"datasets/d1"
    assert uuid.UUID(envelope.id).version == 4
    assert before <= envelope.time <= after
    assert envelope.time.tzinfo is not None
    assert TRACEPARENT.match(envelope.traceparent)
    assert envelope.payload == _message().SerializeToString(deterministic=True)


def test_wrap_gives_each_event_a_new_id() -> None:
    assert _wrap().id != _wrap().id


def test_wrap_keeps_explicit_id_time_and_traceparent() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    envelope = _wrap(event_id="evt-1", time=when, traceparent=PARENT)
    assert envelope.id == "evt-1"
    assert envelope.time == when
    assert envelope.traceparent == PARENT


def test_wrap_requires_a_subject() -> None:
    with pytest.raises(ValueError, match="subject"):
        _wrap(subject="")


def test_headers_are_cloudevents_binary_mode() -> None:
    when = datetime(2025, 6, 1, 12, 30, 45, 250_000, tzinfo=UTC)
    envelope = _wrap(event_id="evt-42", time=when, traceparent=PARENT)

    headers = envelope.headers()
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), "no header may repeat"
    assert all(isinstance(value, bytes) for _, value in headers)
    found = header_map(headers)

    assert found == {
        "ce_specversion": b"1.0",
        "ce_id": b"evt-42",
        "ce_source": b"tuneline/dataset",
        "ce_type": b"google.protobuf.Timestamp",
        "ce_subject": b"datasets/d1",
        "ce_time": b"2025-06-01T12:30:45.250000Z",
        "content-type": b"application/protobuf",
        "traceparent": PARENT.encode(),
    }
    assert SPEC_VERSION == "1.0"
    assert CONTENT_TYPE == "application/protobuf"


def test_ce_time_is_rfc3339_utc_even_for_other_offsets() -> None:
    tz = timezone(timedelta(hours=2))
    envelope = _wrap(time=datetime(2025, 6, 1, 14, 0, 0, tzinfo=tz))
    ce_time = header_map(envelope.headers())["ce_time"]
    assert ce_time == b"2025-06-01T12:00:00Z"
    assert RFC3339_UTC.match(_wrap().headers()[5][1].decode())


def test_extra_headers_are_appended() -> None:
    envelope = Envelope(
        id="i",
        source="s",
        type="t",
        subject="x",
        time=datetime(2025, 1, 1, tzinfo=UTC),
        payload=b"",
        traceparent="",
        extra_headers=(("x-attempt", b"3"),),
    )
    headers = envelope.headers()
    assert headers[-1] == ("x-attempt", b"3")
    assert "traceparent" not in header_map(headers)


def test_round_trip_through_headers_and_decode() -> None:
    envelope = _wrap()

    back = Envelope.from_headers(envelope.headers(), envelope.payload)

    assert back == envelope
    assert back.decode(timestamp_pb2.Timestamp) == _message()


def test_round_trip_of_struct_payload() -> None:
    message = struct_pb2.Struct()
    message.update({"rows": 3, "name": "d1", "tags": ["a", "b"]})
    envelope = Envelope.wrap(message, source="tuneline/test", subject="datasets/d1")

    back = Envelope.from_headers(envelope.headers(), envelope.payload)

    assert back.type == "google.protobuf.Struct"
    assert back.decode(struct_pb2.Struct) == message


def test_round_trip_of_generated_tuneline_event() -> None:
    events_pb2 = pytest.importorskip("tuneline.dataset.v1.events_pb2")
    message = events_pb2.DatasetVersioned(
        dataset_version="datasets/d1/versions/v1", dataset="datasets/d1", row_count=10
    )
    envelope = Envelope.wrap(message, source="tuneline/dataset", subject=message.dataset_version)

    assert envelope.topic == "tuneline.dataset.v1.DatasetVersioned"
    back = Envelope.from_headers(envelope.headers(), envelope.payload)
    assert back.decode(events_pb2.DatasetVersioned) == message


def test_from_headers_tolerates_missing_subject_and_traceparent_and_none_values() -> None:
    envelope = _wrap()
    headers: list[tuple[str, bytes | None]] = [
        (k, v) for k, v in envelope.headers() if k not in ("ce_subject", "traceparent")
    ]
    headers.append(("x-null", None))

    back = Envelope.from_headers(headers, None)

    assert back.subject == ""
    assert back.traceparent == ""
    assert back.payload == b""


def test_from_headers_first_value_wins() -> None:
    envelope = _wrap(event_id="first")
    headers = [*envelope.headers(), ("ce_id", b"second")]
    assert Envelope.from_headers(headers, envelope.payload).id == "first"


@pytest.mark.parametrize("name", ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"])
def test_missing_required_header_is_an_envelope_error(name: str) -> None:
    envelope = _wrap()
    with pytest.raises(EnvelopeError, match=name):
        Envelope.from_headers(_headers_without(envelope, name), envelope.payload)


def test_none_valued_required_header_counts_as_missing() -> None:
    envelope = _wrap()
    headers: list[tuple[str, bytes | None]] = [
        (k, None if k == "ce_id" else v) for k, v in envelope.headers()
    ]
    with pytest.raises(EnvelopeError, match="ce_id"):
        Envelope.from_headers(headers, envelope.payload)


def test_no_headers_at_all_is_an_envelope_error() -> None:
    with pytest.raises(EnvelopeError, match="missing"):
        Envelope.from_headers([], b"")


@pytest.mark.parametrize("version", [b"0.3", b"2.0", b""])
def test_bad_specversion_is_an_envelope_error(version: bytes) -> None:
    envelope = _wrap()
    headers = _replace_header(envelope, "ce_specversion", version)
    with pytest.raises(EnvelopeError, match="specversion"):
        Envelope.from_headers(headers, envelope.payload)


def test_other_content_type_is_an_envelope_error() -> None:
    envelope = _wrap()
    headers = _replace_header(envelope, "content-type", b"application/json")
    with pytest.raises(EnvelopeError, match="content-type"):
        Envelope.from_headers(headers, envelope.payload)


@pytest.mark.parametrize("value", [b"yesterday", b"2025-13-01T00:00:00Z", b"\xff\xfe"])
def test_bad_time_is_an_envelope_error(value: bytes) -> None:
    envelope = _wrap()
    headers = _replace_header(envelope, "ce_time", value)
    with pytest.raises(EnvelopeError, match="ce_time"):
        Envelope.from_headers(headers, envelope.payload)


@pytest.mark.parametrize("value", [b"2025-06-01T12:00:00", b"2025-06-01"])
def test_ce_time_without_utc_offset_is_an_envelope_error(value: bytes) -> None:
    """RFC 3339 requires an offset; a naive time would break every aware comparison later."""
    envelope = _wrap()
    headers = _replace_header(envelope, "ce_time", value)
    with pytest.raises(EnvelopeError, match="ce_time"):
        Envelope.from_headers(headers, envelope.payload)


def test_decode_as_wrong_type_is_an_envelope_error() -> None:
    envelope = _wrap()
    with pytest.raises(EnvelopeError, match=r"google\.protobuf\.Struct"):
        envelope.decode(struct_pb2.Struct)


@pytest.mark.parametrize("payload", [b"\x0a\xff", b"\x08", b"\xff\xff\xff\xff"])
def test_decode_of_corrupt_payload_is_an_envelope_error(payload: bytes) -> None:
    envelope = Envelope.from_headers(_wrap().headers(), payload)
    with pytest.raises(EnvelopeError, match="not a valid"):
        envelope.decode(timestamp_pb2.Timestamp)


def test_child_traceparent_keeps_trace_id_and_flags_and_changes_span() -> None:
    child = child_traceparent(PARENT)

    assert TRACEPARENT.match(child)
    version, trace_id, span_id, flags = child.split("-")
    _, parent_trace, parent_span, parent_flags = PARENT.split("-")
    assert version == "00"
    assert trace_id == parent_trace
    assert span_id != parent_span
    assert flags == parent_flags
    assert child_traceparent(PARENT) != child


def test_child_traceparent_keeps_unsampled_flag() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    assert child_traceparent(parent).endswith("-00")


@pytest.mark.parametrize(
    "parent",
    [
        None,
        "",
        "garbage",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # unknown version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    ],
)
def test_child_traceparent_of_no_or_invalid_parent_starts_a_new_trace(parent: str | None) -> None:
    first = child_traceparent(parent)
    second = child_traceparent(parent)
    assert TRACEPARENT.match(first)
    assert first.endswith("-01")
    assert first.split("-")[1] != second.split("-")[1]
    assert first.split("-")[1] != "4bf92f3577b34da6a3ce929d0e0e4736"


def test_wrap_continues_the_current_handlers_trace() -> None:
    token = current_traceparent.set(PARENT)
    try:
        envelope = _wrap()
    finally:
        current_traceparent.reset(token)

    _, trace_id, span_id, _ = envelope.traceparent.split("-")
    assert trace_id == PARENT.split("-")[1]
    assert span_id != PARENT.split("-")[2]


def test_wrap_outside_a_handler_starts_a_new_trace() -> None:
    assert current_traceparent.get() is None
    first, second = _wrap(), _wrap()
    assert first.traceparent.split("-")[1] != second.traceparent.split("-")[1]


def test_explicit_traceparent_wins_over_current() -> None:
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    token = current_traceparent.set(PARENT)
    try:
        envelope = _wrap(traceparent=other)
    finally:
        current_traceparent.reset(token)
    assert envelope.traceparent == other
