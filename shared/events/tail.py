"""Reading topics from their current end, for tools that watch what happens next.

The demo's event timeline, the benchmarks and the tests' event waiters all want "every record
published from now on" without a consumer group (nothing to commit, nothing to clean up).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kafka import KafkaConsumer, TopicPartition


def consumer_at_end(bootstrap: str, topics: Iterable[str], **config: Any) -> KafkaConsumer:
    """A group-less consumer assigned every partition of ``topics``, positioned at their end.

    The end offsets are resolved before this returns, not lazily at the first poll, so a record
    published after the call is always read and one published before it never is. ``config``
    goes to :class:`kafka.KafkaConsumer` (e.g. ``client_id``).
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **config
    )
    partitions = [
        TopicPartition(topic, number)
        for topic in topics
        for number in sorted(consumer.partitions_for_topic(topic) or {0})
    ]
    consumer.assign(partitions)
    consumer.seek_to_end()
    for partition in partitions:
        consumer.position(partition)
    return consumer
