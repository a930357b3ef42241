"""The only broker SIGKILLed mid-flow and started again: nothing acknowledged is lost or doubled.

One KRaft node of the module's own (never the shared development broker): topics have one
replica, so while it is down no event can be sent at all. Services keep acknowledging state
changes (their events commit to the outbox), and the same relay and consumer loop, never
restarted by the test, deliver and apply every one once the broker is back on the same ports
with the same log dirs. The flow and its checker are ``tests/fixtures/broker_faults.py``'s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.broker_faults import EventFlow
from tuneline.devtools.kafka import LocalKafka
from tuneline.devtools.waiting import eventually

pytestmark = pytest.mark.integration

#: Events in the scenario, half staged before the broker dies and half while it is down.
EVENTS = 200


def test_killing_and_restarting_the_only_broker_mid_flow_loses_and_doubles_nothing(
    single_broker: LocalKafka, tmp_path: Path
) -> None:
    flow = EventFlow(single_broker.bootstrap, tmp_path / "flow")
    flow.start()
    try:
        flow.stage(EVENTS // 2)
        eventually(lambda: flow.applied_count() > 0, timeout=120, what="the flow under way")

        assert single_broker.crash(), "the broker was running"
        try:
            # acknowledged with no broker at all: the outbox holds them
            held = flow.stage(EVENTS - EVENTS // 2)
            assert set(held) <= {row.event_id for row in flow.unsent()}
        finally:
            single_broker.start(timeout=180)  # same ports, same log dirs

        eventually(flow.all_applied, timeout=240, what="every acknowledged event applied")
        eventually(lambda: not flow.unsent(), timeout=120, what="the relay marked every row sent")
        count = flow.count()
        assert count.acknowledged == EVENTS
        assert (count.lost, count.doubled) == (0, 0), count
        assert flow.consumer.healthy, "the consumer loop recovered by itself"
    finally:
        flow.stop()
