"""Reading and replaying a ``<topic>.dlq``: what ``tuneline dlq`` is built on.

A dead letter is the failing record's original key, value and headers plus the ``dlq_*``
headers the consumer added (why, where, which group, how many attempts). A replay sends the
original key, value and headers back to the original topic: a new record with the same
``ce_id``, so a group that already applied the event skips it, and the group that dead-lettered
it (which marks dead letters by position, not by event id) applies it once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition

from shared.events.envelope import DLQ_SUFFIX, DLQ_VALUE_OMITTED_HEADER, dlq_topic_for
from shared.events.publisher import KafkaEventPublisher
from shared.events.security import PLAINTEXT

#: Headers the consumer adds when it dead-letters a record; a replay leaves them out.
DLQ_HEADER_PREFIX = "dlq_"


def original_topic(topic: str) -> str:
    """``tuneline.x.v1.Event`` for either it or its ``.dlq`` twin."""
    return topic.removesuffix(DLQ_SUFFIX)


@dataclass(frozen=True)
class DeadLetter:
    """One record of a ``.dlq`` topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def position(self) -> str:
        """``partition:offset`` on the ``.dlq`` topic: how commands name a dead letter."""
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", errors="replace") if value is not None else ""
        return ""

    @property
    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers the record had before it was dead-lettered."""
        return [(k, v) for k, v in self.headers if not k.startswith(DLQ_HEADER_PREFIX)]

    @property
    def failure(self) -> dict[str, str]:
        """The ``dlq_*`` headers, without the prefix (error, topic, partition, offset, …)."""
        return {
            k.removeprefix(DLQ_HEADER_PREFIX): self.header(k)
            for k, _ in self.headers
            if k.startswith(DLQ_HEADER_PREFIX)
        }


def read_dead_letters(
    bootstrap: str,
    topic: str,
    *,
    limit: int | None = None,
    timeout: float = 30.0,
    security: Mapping[str, object] = PLAINTEXT,
) -> list[DeadLetter]:
    """Every record of ``topic``'s DLQ, oldest first per partition, read to its current end."""
    dlq = dlq_topic_for(original_topic(topic))
    consumer = KafkaConsumer(
        **security, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    try:
        partitions = [
            TopicPartition(dlq, p) for p in sorted(consumer.partitions_for_topic(dlq) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {dlq} to its end within {timeout:.0f} s")
            for records in consumer.poll(timeout_ms=200).values():
                letters.extend(
                    DeadLetter(
                        partition=r.partition,
                        offset=r.offset,
                        key=r.key,
                        value=r.value,
                        headers=tuple((k, v) for k, v in (r.headers or [])),
                    )
                    for r in records
                    if r.offset < ends[TopicPartition(dlq, r.partition)]
                )
        letters.sort(key=lambda letter: (letter.partition, letter.offset))
        return letters[:limit] if limit is not None else letters
    finally:
        consumer.close()


def replay(
    publisher: KafkaEventPublisher,
    topic: str,
    letters: Iterable[DeadLetter],
    *,
    timeout: float = 30.0,
) -> int:
    """Send each dead letter's original record back to its original topic; returns how many.

    The original topic is the ``dlq_topic`` header (``topic`` without ``.dlq`` if missing).
    Waits for every acknowledgement. Raises ``ValueError``, sending nothing, when one of them
    was dead-lettered without its value (too large to send whole).
    """
    letters = list(letters)
    for letter in letters:  # all checked before any is sent: a replay is all or nothing
        if letter.header(DLQ_VALUE_OMITTED_HEADER):
            raise ValueError(
                f"dead letter {letter.position} was kept without its value "
                f"({letter.header(DLQ_VALUE_OMITTED_HEADER)}); the original is at "
                f"{letter.header('dlq_topic')} {letter.header('dlq_partition')}:"
                f"{letter.header('dlq_offset')}"
            )
    futures = []
    for letter in letters:
        target = letter.header("dlq_topic") or original_topic(topic)
        futures.append(
            publisher.send_raw(
                target, key=letter.key, value=letter.value, headers=letter.original_headers
            )
        )
    for future in futures:
        future.get(timeout=timeout)  # type: ignore[attr-defined]
    return len(futures)
