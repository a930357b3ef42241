"""Follow every Tuneline pipeline event on the broker, in arrival order.

:class:`EventTimeline` reads the pipeline's topics from their current end in a background
thread, decodes each record's CloudEvents envelope into its protobuf message, and keeps them
in a list that callers can wait on. It is a plain reader (no consumer group, no commits): it
observes the system without taking part in it, like an audit log would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from kafka import KafkaConsumer

from shared.events import Envelope, EnvelopeError, ensure_topics, topic_for
from shared.events.tail import consumer_at_end
from tuneline.dataset.v1 import events_pb2 as dataset_events
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.registry.v1 import events_pb2 as registry_events
from tuneline.splitter.v1 import events_pb2 as splitter_events
from tuneline.trainer.v1 import events_pb2 as trainer_events

#: Every event of the pipeline, in the order the flow produces them.
PIPELINE_EVENTS: tuple[type[Message], ...] = (
    dataset_events.DatasetVersioned,
    dataset_events.DatasetAudited,
    splitter_events.SplitCreated,
    trainer_events.TrainingJobStarted,
    trainer_events.CheckpointReady,
    trainer_events.TrainingJobCompleted,
    trainer_events.TrainingJobFailed,
    evaluator_events.EvaluationCompleted,
    evaluator_events.RegressionDetected,
    registry_events.ModelPromoted,
    registry_events.ModelRolledBack,
)
_BY_TYPE = {topic_for(kind): kind for kind in PIPELINE_EVENTS}

M = TypeVar("M", bound=Message)


class TimelineTimeout(TimeoutError):
    """An awaited event did not arrive in time."""


@dataclass(frozen=True)
class SeenEvent:
    """One event as it arrived: its envelope attributes and the decoded message."""

    id: str
    kind: str  # the short message name, e.g. ``CheckpointReady``
    subject: str
    time: datetime
    message: Any
    received_monotonic: float


class EventTimeline:
    """Read the pipeline topics from their end (at :meth:`start`) in a background thread."""

    def __init__(self, bootstrap: str, *, poll_timeout_ms: int = 200) -> None:
        self._bootstrap = bootstrap
        self._poll_timeout_ms = poll_timeout_ms
        self._events: list[SeenEvent] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: KafkaConsumer | None = None
        self._listeners: list[Callable[[SeenEvent], None]] = []

    def subscribe(self, listener: Callable[[SeenEvent], None]) -> None:
        """Call ``listener`` (from the reader thread) with every event as it arrives."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Position at the end of every pipeline topic, then start reading."""
        topics = [topic_for(kind) for kind in PIPELINE_EVENTS]
        ensure_topics(self._bootstrap, topics)
        consumer = consumer_at_end(self._bootstrap, topics, client_id="tuneline-timeline")
        self._consumer = consumer
        self._thread = threading.Thread(target=self._read, name="event-timeline", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._consumer is not None:
            self._consumer.close()

    def __enter__(self) -> EventTimeline:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _read(self) -> None:
        assert self._consumer is not None
        while not self._stop.is_set():
            batches = self._consumer.poll(timeout_ms=self._poll_timeout_ms)
            arrived = []
            for records in batches.values():
                for record in records:
                    seen = self._decode(record)
                    if seen is not None:
                        arrived.append(seen)
            if not arrived:
                continue
            # partitions interleave: keep the order in which the events were made
            arrived.sort(key=lambda event: event.time)
            with self._changed:
                self._events.extend(arrived)
                self._changed.notify_all()
            for seen in arrived:
                for listener in self._listeners:
                    listener(seen)

    @staticmethod
    def _decode(record: Any) -> SeenEvent | None:
        try:
            envelope = Envelope.from_headers(record.headers, record.value)
            kind = _BY_TYPE.get(envelope.type)
            if kind is None:
                return None
            message = envelope.decode(kind)
        except EnvelopeError:
            return None  # not ours to judge: the services' consumers dead-letter it
        return SeenEvent(
            id=envelope.id,
            kind=kind.DESCRIPTOR.name,
            subject=envelope.subject,
            time=envelope.time,
            message=message,
            received_monotonic=time.monotonic(),
        )

    # -- reading what arrived -----------------------------------------------------------------

    def events(self, kind: type[Message] | None = None) -> list[SeenEvent]:
        """Every event seen so far (of ``kind``), in arrival order."""
        with self._changed:
            seen = list(self._events)
        if kind is None:
            return seen
        return [event for event in seen if event.kind == kind.DESCRIPTOR.name]

    def wait_for(
        self,
        kind: type[M],
        where: Callable[[M], bool] = lambda _message: True,
        *,
        timeout: float,
        after: int = 0,
        also_fail_on: Sequence[tuple[type[Message], Callable[[Any], bool]]] = (),
    ) -> M:
        """The first ``kind`` event (index ≥ ``after``) whose message satisfies ``where``.

        ``also_fail_on`` lists events that mean the awaited one will never come (e.g. a
        TrainingJobFailed while waiting for CheckpointReady): seeing one raises at once.
        """
        deadline = time.monotonic() + timeout
        name = kind.DESCRIPTOR.name
        with self._changed:
            while True:
                for event in self._events[after:]:
                    if event.kind == name and where(event.message):
                        return event.message
                    for failing_kind, failing_where in also_fail_on:
                        if event.kind == failing_kind.DESCRIPTOR.name and failing_where(
                            event.message
                        ):
                            raise TimelineTimeout(f"{event.kind} arrived instead: {event.message}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimelineTimeout(f"no {name} arrived within {timeout:.0f} s")
                self._changed.wait(min(remaining, 1.0))

    def __len__(self) -> int:
        with self._changed:
            return len(self._events)
