"""The publisher's producer lifecycle, against a fake ``KafkaProducer`` (no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.events import KafkaEventPublisher


class _TransactionManager:
    def __init__(self) -> None:
        self.fatal = False

    def has_fatal_error(self) -> bool:
        return self.fatal


class _FakeProducer:
    made: list[_FakeProducer] = []

    def __init__(self, **_config: Any) -> None:
        self._transaction_manager = _TransactionManager()
        self.sent: list[str] = []
        self.closed = False
        _FakeProducer.made.append(self)

    def send(self, topic: str, **_record: Any) -> None:
        self.sent.append(topic)

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


@pytest.fixture
def producers(monkeypatch: pytest.MonkeyPatch) -> list[_FakeProducer]:
    monkeypatch.setattr(_FakeProducer, "made", [])
    monkeypatch.setattr("shared.events.publisher.KafkaProducer", _FakeProducer)
    return _FakeProducer.made


def test_a_producer_in_its_fatal_state_is_replaced_by_a_new_one(
    producers: list[_FakeProducer],
) -> None:
    """kafka-python 3.0.12 turns an idempotent producer fatal on any non-retriable broker error
    (a record over the topic's ``max.message.bytes``); every later send would fail."""
    publisher = KafkaEventPublisher("unused:0", client_id="test")
    publisher.send_raw("t.dlq", key=None, value=b"v", headers=[])
    publisher.send_raw("t.dlq", key=None, value=b"v", headers=[])
    assert len(producers) == 1, "a healthy producer is reused"

    producers[0]._transaction_manager.fatal = True
    publisher.send_raw("t.dlq", key=None, value=b"v", headers=[])
    assert len(producers) == 2
    assert producers[0].closed
    assert (producers[0].sent, producers[1].sent) == (["t.dlq", "t.dlq"], ["t.dlq"])
