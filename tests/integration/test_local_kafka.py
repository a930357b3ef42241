"""The session's Kafka broker is real: create a topic, produce idempotently, consume it back."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from tuneline.devtools.waiting import eventually

pytestmark = pytest.mark.integration


def test_round_trip_through_the_broker(kafka_bootstrap: str) -> None:
    topic = f"tuneline.test.local-kafka.{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="test-admin")
    try:
        # NewTopic works on kafka-python 2.x and (deprecated) 3.x alike.
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        eventually(
            lambda: topic in admin.list_topics(), timeout=30, what=f"{topic} in the metadata"
        )
    finally:
        admin.close()

    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=0
    )
    try:
        meta = producer.send(
            topic, key=b"k-1", value=b"hello kafka", headers=[("ce_id", b"e-1")]
        ).get(timeout=30)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    assert meta.topic == topic
    assert meta.partition == 0
    assert meta.offset == 0

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        records = eventually(
            lambda: [r for batch in consumer.poll(timeout_ms=500).values() for r in batch],
            timeout=60,
            what=f"a record on {topic}",
        )
    finally:
        consumer.close()

    assert len(records) == 1
    (record,) = records
    assert record.key == b"k-1"
    assert record.value == b"hello kafka"
    assert list(record.headers) == [("ce_id", b"e-1")]
