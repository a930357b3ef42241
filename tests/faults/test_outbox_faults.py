"""Outbox faults on a real broker: an oversized event, a relay crash between send and mark, two
relays on one database. Nothing acknowledged is lost or applied twice.

One broker is enough for these (the faults are in the relay, not in Kafka): the session's shared
broker (``kafka_bootstrap``), the flow's own consumer group and outbox. The flow and its checker
are in tests/fixtures/broker_faults.py; relays that must crash or run side by side are real
processes (tests/fixtures/relay_process.py).

What the outbox promises (shared/events/outbox.py), and so what is asserted:

* an event too large to ever be sent is refused when it is staged, so its state change fails
  with it; a row the producer refuses anyway (staged before the size check, or with a larger
  limit) is parked with an alert and later rows, its subject's included, flow past it;
* a relay killed after Kafka acknowledged a batch and before marking it re-sends that batch when
  it comes back (same relay id, as a restarted container): the topic holds those events twice,
  the consumer's dedupe applies each once;
* relays with distinct ids on one database (SQLite: compare-and-set on a lease; PostgreSQL:
  ``FOR UPDATE SKIP LOCKED`` too) publish each row exactly once while none crashes: one copy
  per event on the topic, one effect.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.events import MAX_EVENT_BYTES, EventTooLarge, OutboxEvent, stage_event
from shared.events.publisher import MAX_REQUEST_BYTES
from tests.fixtures.broker_faults import FLOW_EVENT, EventFlow
from tests.fixtures.relay_process import relay_process, resume_relay, stop_relay
from tuneline.devtools.waiting import eventually

pytestmark = pytest.mark.integration

#: Events per scenario.
EVENTS = 120


@pytest.fixture
def flows() -> Iterator[list[EventFlow]]:
    """Flows the test makes (it chooses the outbox database); stopped at the end."""
    flows: list[EventFlow] = []
    yield flows
    for flow in flows:
        flow.stop()


def _assert_nothing_lost_or_doubled(flow: EventFlow) -> None:
    count = flow.count()
    assert (count.lost, count.doubled) == (0, 0), count
    assert count.applied == count.acknowledged == len(flow.acknowledged)
    assert flow.consumer.healthy


def test_an_oversized_event_is_refused_at_staging_and_a_refused_row_parks_while_later_ones_flow(
    kafka_bootstrap: str, tmp_path: Path, flows: list[EventFlow]
) -> None:
    flow = EventFlow(kafka_bootstrap, tmp_path / "flow")
    flows.append(flow)
    flow.start()
    subject = f"datasets/fault-{flow.run}-0"  # a subject the flow's later events use too
    oversized = FLOW_EVENT(dataset_version="x" * (MAX_EVENT_BYTES + 1))
    # over the producer's own limit (staging keeps a margin below it for batch overhead)
    unsendable = FLOW_EVENT(dataset_version="x" * (MAX_REQUEST_BYTES + 1))

    # 1. refused at staging: the handler's transaction fails and leaves nothing behind
    with flow.outbox() as session, pytest.raises(EventTooLarge, match="limited to"):
        stage_event(session, oversized, source="tuneline/fault-flow", subject=subject)
    assert flow.unsent() == []

    # 2. a row that got in anyway (an older version without the check, or a larger limit):
    # the producer refuses it, the relay parks it and raises the parked gauge
    with flow.outbox() as session, session.begin():
        refused = stage_event(
            session, unsendable, source="tuneline/fault-flow", subject=subject, max_bytes=1 << 30
        )
    flow.relay.wake()
    flow.stage(EVENTS)
    eventually(flow.all_applied, timeout=180, what="every later event applied")

    [parked] = flow.unsent()
    assert parked.event_id == refused.id
    assert parked.parked_at is not None
    assert "MessageSizeTooLargeError" in (parked.last_error or "")
    assert flow.metrics_registry.get_sample_value("tuneline_outbox_parked_events") == 1
    assert refused.id not in flow.applications()
    _assert_nothing_lost_or_doubled(flow)
    assert flow.copies_on_topic()[refused.id] == 0


def test_a_relay_killed_between_send_and_mark_resends_and_the_consumer_applies_once(
    kafka_bootstrap: str, tmp_path: Path, flows: list[EventFlow]
) -> None:
    flow = EventFlow(kafka_bootstrap, tmp_path / "flow")
    flows.append(flow)
    flow.start(relay=False)  # the relays here are processes
    flow.stage(EVENTS // 2)
    acked = tmp_path / "acknowledged-not-marked"
    relay_id = "relay-on-this-host"

    with relay_process(
        flow.outbox_url, kafka_bootstrap, relay_id, pause_before_mark=acked
    ) as first:
        eventually(acked.exists, timeout=120, what="the relay's first batch acknowledged by Kafka")
        first.kill()  # SIGKILL between the acknowledgement and the mark
        first.wait(timeout=60)
    sent_not_marked = acked.read_text().split()
    assert sent_not_marked
    unsent = {row.event_id: row for row in flow.unsent()}
    assert set(sent_not_marked) <= set(unsent), "the crash came before the mark"
    assert {unsent[i].claimed_by for i in sent_not_marked} == {relay_id}
    # the consumer applies the copies that made it out
    eventually(
        lambda: set(sent_not_marked) <= set(flow.applications()),
        timeout=120,
        what="the batch sent before the crash applied",
    )

    flow.stage(EVENTS - EVENTS // 2)
    with relay_process(flow.outbox_url, kafka_bootstrap, relay_id) as restarted:
        eventually(flow.all_applied, timeout=180, what="every acknowledged event applied")
        eventually(lambda: not flow.unsent(), timeout=120, what="every row marked sent")
        stop_relay(restarted)

    _assert_nothing_lost_or_doubled(flow)
    copies = flow.copies_on_topic()
    assert {i: copies[i] for i in sent_not_marked} == dict.fromkeys(sent_not_marked, 2), (
        "the batch the crash cut went out twice"
    )
    others = set(flow.acknowledged) - set(sent_not_marked)
    assert {copies[i] for i in others} == {1}


def test_two_relays_on_one_database_publish_each_row_once(
    kafka_bootstrap: str, tmp_path: Path, database_url: str, flows: list[EventFlow]
) -> None:
    """Relay a holds its first batch (sent, not yet marked, under its lease) while relay b
    works: b must skip a's rows and send every other one it may (the rows behind a's, about
    the same subjects, wait for them); then a marks its batch and both go on."""
    flow = EventFlow(kafka_bootstrap, tmp_path / "flow", outbox_url=database_url)
    flows.append(flow)
    flow.start(relay=False)
    flow.stage(EVENTS // 2)  # a backlog both relays find
    held = tmp_path / "a-holds"
    with relay_process(
        flow.outbox_url, kafka_bootstrap, "replica-a", batch_size=5, pause_before_mark=held
    ) as a:
        # b starts once a holds its batch: started together, b could send the whole backlog
        # before a claims a row (on a loaded machine it did), and a would hold nothing
        eventually(held.exists, timeout=120, what="relay a holding its first batch")
        with relay_process(flow.outbox_url, kafka_bootstrap, "replica-b", batch_size=5) as b:
            held_ids = set(held.read_text().split())
            with flow.outbox() as session:
                held_subjects = set(
                    session.scalars(
                        select(OutboxEvent.subject).where(OutboxEvent.event_id.in_(held_ids))
                    )
                )
                behind_a = len(
                    session.scalars(
                        select(OutboxEvent.seq).where(OutboxEvent.subject.in_(held_subjects))
                    ).all()
                )
            eventually(
                lambda: {row.subject for row in flow.unsent()} <= held_subjects,
                timeout=120,
                what="relay b sent every row not behind relay a's",
            )
            resume_relay(a)
            flow.stage(EVENTS - EVENTS // 2)  # and events committed while both run
            eventually(flow.all_applied, timeout=180, what="every acknowledged event applied")
            eventually(lambda: not flow.unsent(), timeout=120, what="every row marked sent")
            marked = {"a": stop_relay(a), "b": stop_relay(b)}

    _assert_nothing_lost_or_doubled(flow)
    assert marked["a"] >= len(held_ids)
    assert marked["b"] >= EVENTS // 2 - behind_a > 0, "b sent every row a did not hold up"
    assert sum(marked.values()) == EVENTS, f"rows marked per relay: {marked}"
    copies = flow.copies_on_topic()
    assert {copies[i] for i in flow.acknowledged} == {1}, "each row published exactly once"
    with flow.outbox() as session:
        assert session.scalars(select(OutboxEvent.claimed_by)).all() == [None] * EVENTS
    print(f"rows sent per relay ({database_url.partition(':')[0]}): {marked}")
