"""Broker faults on a real three-broker cluster: nothing acknowledged is lost or applied twice.

The flow is the plumbing every service shares (outbox → relay → Kafka → consumer loop → effect,
see tests/fixtures/broker_faults.py); the checker counts acknowledged event ids against effect
rows. Topics have replication factor 3 and ``min.insync.replicas`` 2, producers ``acks=all``
and idempotence.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.events import ensure_topics
from shared.events.publisher import partition_replicas
from tests.fixtures.broker_faults import (
    FLOW_TOPIC,
    PROBE_TOPIC,
    SUBJECTS,
    EventFlow,
    crash_partition_leader,
    fully_replicated,
    isr_sizes,
    leader_of,
    partitions,
    refused_for_replicas,
    rejoin,
    set_min_insync_replicas,
)
from tuneline.devtools.kafka import LocalKafkaCluster
from tuneline.devtools.waiting import eventually

pytestmark = pytest.mark.integration

#: Events per scenario, half staged before the fault and half after it.
EVENTS = 200


@pytest.fixture
def flow(kafka_cluster: LocalKafkaCluster, tmp_path: Path) -> Iterator[EventFlow]:
    flow = EventFlow(kafka_cluster.bootstrap, tmp_path / "flow")
    flow.start()
    try:
        yield flow
    finally:
        flow.stop()


def test_topics_are_created_with_three_replicas_and_two_in_sync(
    kafka_cluster: LocalKafkaCluster, flow: EventFlow
) -> None:
    found = partitions(kafka_cluster.bootstrap, FLOW_TOPIC)
    assert [len(partition_replicas(p)) for p in found] == [3, 3, 3]
    # an existing topic as durable as configured draws no warning
    assert ensure_topics(kafka_cluster.bootstrap, [FLOW_TOPIC]) == []
    assert ensure_topics(
        kafka_cluster.bootstrap, [FLOW_TOPIC], min_insync_replicas=3, with_dlq=False
    ) == [f"{FLOW_TOPIC}: min.insync.replicas 2, configured 3"]


def test_killing_the_partition_leader_mid_flow_loses_and_doubles_nothing(
    kafka_cluster: LocalKafkaCluster, flow: EventFlow
) -> None:
    flow.stage(EVENTS // 2)
    eventually(lambda: flow.applied_count() > 0, timeout=120, what="the flow under way")

    crashed = crash_partition_leader(kafka_cluster, FLOW_TOPIC)
    try:
        eventually(
            lambda: leader_of(kafka_cluster.running_bootstrap, FLOW_TOPIC) not in (crashed, -1),
            timeout=120,
            what=f"a new leader for {FLOW_TOPIC}-0 after node {crashed} died",
        )
        flow.stage(EVENTS - EVENTS // 2)  # acknowledged while a broker is dead
        eventually(flow.all_applied, timeout=240, what="every acknowledged event applied")
        eventually(lambda: not flow.unsent(), timeout=120, what="the relay marked every row sent")

        count = flow.count()
        assert count.acknowledged == EVENTS
        assert (count.lost, count.doubled) == (0, 0), count
        assert flow.consumer.healthy
    finally:
        rejoin(kafka_cluster, crashed, FLOW_TOPIC)


def test_below_min_insync_the_outbox_keeps_events_until_the_broker_returns(
    kafka_cluster: LocalKafkaCluster, flow: EventFlow
) -> None:
    bootstrap = kafka_cluster.bootstrap
    ensure_topics(bootstrap, [PROBE_TOPIC], with_dlq=False)
    before = flow.stage(10)
    eventually(flow.all_applied, timeout=120, what="the healthy flow applied")

    # One broker of three down would still leave two in sync; with min.insync.replicas 3 it
    # leaves too few (stopping two of three would take the controller quorum with them).
    stopped = 3
    for topic in (FLOW_TOPIC, PROBE_TOPIC):
        set_min_insync_replicas(bootstrap, topic, 3)
    try:
        assert kafka_cluster.node(stopped).stop()
        eventually(
            lambda: isr_sizes(kafka_cluster.running_bootstrap, FLOW_TOPIC) == [2, 2, 2],
            timeout=120,
            what=f"node {stopped} out of every ISR",
        )
        eventually(
            lambda: refused_for_replicas(kafka_cluster.running_bootstrap),
            timeout=120,
            what="an acks=all write refused with NotEnoughReplicas",
        )

        # one event per subject: the relay keeps a subject's events in order, so a second
        # event about a subject waits (untried) behind the first
        held = flow.stage(SUBJECTS)
        eventually(
            lambda: {r.event_id for r in flow.unsent() if (r.attempts or 0) >= 1} >= set(held),
            timeout=120,
            what="the relay tried (and failed) to send every held event",
        )
        kept = {r.event_id: r for r in flow.unsent()}
        assert set(held) <= set(kept), "the outbox keeps every refused event"
        assert all(kept[i].parked_at is None for i in held), "a broker outage never parks"
        assert not set(held) & set(flow.applications()), "nothing was written below the minimum"
    finally:
        kafka_cluster.start_node(stopped, timeout=180)

    eventually(
        flow.all_applied, timeout=240, what="the held events applied once the broker is back"
    )
    eventually(lambda: not flow.unsent(), timeout=120, what="the relay marked every row sent")
    count = flow.count()
    assert count.acknowledged == len(before) + len(held)
    assert (count.lost, count.doubled) == (0, 0), count

    for topic in (FLOW_TOPIC, PROBE_TOPIC):
        set_min_insync_replicas(bootstrap, topic, 2)
    eventually(
        lambda: fully_replicated(bootstrap, FLOW_TOPIC),
        timeout=180,
        what=f"node {stopped} back in every ISR",
    )
