"""Replaying dead letters: all or nothing, and never a value the DLQ did not keep."""

from __future__ import annotations

from typing import Any

import pytest

from shared.events.dead_letters import DeadLetter, replay


class _RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    def send_raw(self, topic: str, *, key: Any, value: Any, headers: Any) -> Any:
        self.sent.append((topic, value))
        return self

    def get(self, timeout: float | None = None) -> None:
        return None


def _letter(offset: int, *extra: tuple[str, bytes]) -> DeadLetter:
    headers = (
        ("ce_id", f"e{offset}".encode()),
        ("dlq_topic", b"tuneline.things.v1.Happened"),
        ("dlq_partition", b"0"),
        ("dlq_offset", str(offset).encode()),
        *extra,
    )
    return DeadLetter(0, offset, b"k", b"value", headers)


def test_a_replay_sends_each_original_back_without_the_dlq_headers() -> None:
    publisher = _RecordingPublisher()
    sent = replay(publisher, "tuneline.things.v1.Happened.dlq", [_letter(1), _letter(2)])  # type: ignore[arg-type]
    assert sent == 2
    assert publisher.sent == [("tuneline.things.v1.Happened", b"value")] * 2


def test_a_dead_letter_kept_without_its_value_is_refused_and_nothing_is_sent() -> None:
    publisher = _RecordingPublisher()
    stub = _letter(7, ("dlq_value_omitted", b"1048000 bytes, sha256 ab"))
    with pytest.raises(ValueError, match=r"without its value .* tuneline.things.v1.Happened 0:7"):
        replay(publisher, "tuneline.things.v1.Happened.dlq", [_letter(1), stub])  # type: ignore[arg-type]
    assert publisher.sent == [], "all or nothing: the good letter was not sent either"
