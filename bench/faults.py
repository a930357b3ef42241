"""Broker faults on a real three-broker cluster: events lost, doubled, and the time to recover.

A local KRaft cluster of three brokers (RF 3, ``min.insync.replicas`` 2, ``acks=all``,
idempotent producers) carries the shared event plumbing (outbox → relay → Kafka → consumer
loop → effect; ``tests/fixtures/broker_faults.py``). Each scenario stages ``--events`` events,
half before the fault and half during it, and a checker counts acknowledged event ids against
effect rows:

* ``no fault``: the baseline, measured in the same run;
* ``leader SIGKILL``: the broker leading partition 0 is killed mid-flow (and restarted after);
* ``leader SIGSTOP``: that broker is paused for ``--pause`` seconds, longer than the clients'
  10 s request timeout, then resumed;
* ``ISR below min``: the topic's ``min.insync.replicas`` is raised to 3 and one broker stopped,
  so writes are refused with NotEnoughReplicas and the outbox holds them; the broker returns.
* ``only broker SIGKILL`` (on a single broker of its own, started once the cluster is gone):
  the broker is SIGKILLed, the second half is acknowledged while it is down, and it is started
  again on the same ports and log dirs; the same relay and consumer loop carry on.
* ``lost gRPC reply`` (on the same cluster, the real registry in-process): ``--rollbacks``
  RollbackModel calls through a proxy that drops each first response after the server sent it;
  the SDK retries with its request id. Counted: acknowledged rollbacks against alias moves and
  ModelRolledBack records; ``recover s`` is the slowest call. (``tests/faults`` runs one.)
* ``16+N watchers``: ``--watchers`` WatchAlias streams open while ``--rollbacks`` rollbacks run,
  Health SERVING after each. Counted: moves due to every watcher against moves received once
  (applied) or twice (doubled); ``recover s`` is the slowest rollback.

``recover s`` is the time from the fault (the kill, the pause; for ``ISR below min`` the broker's
return, since nothing may be written before it) until every acknowledged event is applied; for
``no fault``, from the same point in the flow; for ``only broker SIGKILL``, from the kill, the
restart included. Every scenario but the pause has a version in ``make test``
(``tests/faults``); the pause waits out timeouts on purpose and lives here.

    .venv/bin/python bench/faults.py [--events 400] [--pause 15]

Expected: every scenario 0 lost and 0 doubled; last line ``faults survived: N/N, lost: 0,
doubled: 0``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.events import ensure_topics
from tests.fixtures.broker_faults import (
    FLOW_TOPIC,
    PROBE_TOPIC,
    EventFlow,
    FlowCount,
    crash_partition_leader,
    isr_sizes,
    leader_of,
    refused_for_replicas,
    rejoin,
    set_min_insync_replicas,
    wait_until,
)
from tests.fixtures.grpc_faults import lost_responses, watchers_during_rollbacks
from tuneline.devtools.kafka import LocalKafkaCluster, free_port
from tuneline.devtools.waiting import eventually

#: Generous safety nets, not measures: a scenario that needs them has failed.
APPLY_TIMEOUT = 600.0


@dataclass(frozen=True)
class Outcome:
    scenario: str
    count: FlowCount
    recover_seconds: float

    @property
    def survived(self) -> bool:
        return self.count.lost == 0 and self.count.doubled == 0


Fault = Callable[[LocalKafkaCluster, EventFlow, int], float]


def _drain(flow: EventFlow) -> float:
    """Seconds until every acknowledged event is applied and the outbox is empty."""
    seconds = wait_until(flow.all_applied, timeout=APPLY_TIMEOUT, what="every event applied")
    eventually(lambda: not flow.unsent(), timeout=APPLY_TIMEOUT, what="the outbox sent")
    return seconds


def no_fault(cluster: LocalKafkaCluster, flow: EventFlow, half: int) -> float:
    flow.stage(half)
    return _drain(flow)


def leader_sigkill(cluster: LocalKafkaCluster, flow: EventFlow, half: int) -> float:
    crashed = crash_partition_leader(cluster, FLOW_TOPIC)
    began = time.monotonic()
    try:
        flow.stage(half)
        _drain(flow)
        return time.monotonic() - began
    finally:
        rejoin(cluster, crashed, FLOW_TOPIC)


def leader_sigstop(
    cluster: LocalKafkaCluster, flow: EventFlow, half: int, *, pause_seconds: float
) -> float:
    leader = leader_of(cluster.running_bootstrap, FLOW_TOPIC)
    pid = cluster.node(leader).running_pid()
    assert pid is not None, f"leader {leader} is not running"
    os.kill(pid, signal.SIGSTOP)
    began = time.monotonic()
    try:
        flow.stage(half)
        # the pause lasts its full length even when the flow recovers sooner
        remaining = pause_seconds - (time.monotonic() - began)
        if remaining > 0:
            time.sleep(remaining)
    finally:
        os.kill(pid, signal.SIGCONT)
    _drain(flow)
    seconds = time.monotonic() - began
    rejoin(cluster, leader, FLOW_TOPIC)
    return seconds


def isr_below_min(cluster: LocalKafkaCluster, flow: EventFlow, half: int) -> float:
    ensure_topics(cluster.bootstrap, [PROBE_TOPIC], with_dlq=False)
    stopped = 3
    for topic in (FLOW_TOPIC, PROBE_TOPIC):
        set_min_insync_replicas(cluster.bootstrap, topic, 3)
    try:
        cluster.node(stopped).stop()
        eventually(
            lambda: isr_sizes(cluster.running_bootstrap, FLOW_TOPIC) == [2, 2, 2],
            timeout=APPLY_TIMEOUT,
            what="ISR down to 2",
        )
        eventually(
            lambda: refused_for_replicas(cluster.running_bootstrap),
            timeout=APPLY_TIMEOUT,
            what="NotEnoughReplicas",
        )
        flow.stage(half)
        eventually(
            lambda: all((r.attempts or 0) >= 1 for r in flow.unsent()[:1]),
            timeout=APPLY_TIMEOUT,
            what="the relay refused",
        )
    finally:
        cluster.start_node(stopped, timeout=APPLY_TIMEOUT)
    began = time.monotonic()
    _drain(flow)
    seconds = time.monotonic() - began
    for topic in (FLOW_TOPIC, PROBE_TOPIC):
        set_min_insync_replicas(cluster.bootstrap, topic, 2)
    rejoin(cluster, stopped, FLOW_TOPIC)
    return seconds


def only_broker_sigkill(cluster: LocalKafkaCluster, flow: EventFlow, half: int) -> float:
    [node] = cluster.nodes
    assert node.crash(), "the broker was running"
    began = time.monotonic()
    flow.stage(half)  # acknowledged while no broker runs: the outbox holds them
    cluster.start_node(node.node_id, timeout=APPLY_TIMEOUT)
    _drain(flow)
    return time.monotonic() - began


def run_scenario(
    cluster: LocalKafkaCluster, workdir: Path, name: str, fault: Fault, events: int
) -> Outcome:
    flow = EventFlow(cluster.bootstrap, workdir / name.replace(" ", "-"))
    flow.start()
    try:
        half = events // 2
        flow.stage(half)
        eventually(lambda: flow.applied_count() > 0, timeout=APPLY_TIMEOUT, what="under way")
        seconds = fault(cluster, flow, events - half)
        _drain(flow)
        return Outcome(name, flow.count(), seconds)
    finally:
        flow.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400, help="events per scenario")
    parser.add_argument(
        "--pause", type=float, default=15.0, help="seconds the SIGSTOP scenario pauses a broker"
    )
    parser.add_argument(
        "--rollbacks", type=int, default=20, help="RollbackModel calls per gRPC scenario"
    )
    parser.add_argument(
        "--watchers", type=int, default=48, help="open WatchAlias streams (16 + N) for a rollback"
    )
    args = parser.parse_args()
    scenarios: list[tuple[str, Fault]] = [
        ("no fault", no_fault),
        ("leader SIGKILL", leader_sigkill),
        (
            "leader SIGSTOP",
            lambda c, f, h: leader_sigstop(c, f, h, pause_seconds=args.pause),
        ),
        ("ISR below min", isr_below_min),
    ]
    with tempfile.TemporaryDirectory(prefix="tuneline-faults-") as tmp:
        ports: list[int] = []
        while len(ports) < 8:  # three nodes of the cluster, then the single broker
            port = free_port()
            if port not in ports:
                ports.append(port)
        cluster = LocalKafkaCluster(
            home=Path(tmp) / "kafka",
            brokers=3,
            node_ports=list(zip(ports[:6:2], ports[1:6:2], strict=True)),
        )
        print("starting a three-broker cluster ...", flush=True)
        cluster.start(timeout=300)
        print(f"cluster up in {cluster.startup_seconds:.1f} s on {cluster.bootstrap}", flush=True)
        outcomes: list[Outcome] = []
        try:
            for name, fault in scenarios:
                print(f"running {name} ...", flush=True)
                outcomes.append(run_scenario(cluster, Path(tmp), name, fault, args.events))
            print("running lost gRPC reply ...", flush=True)
            count, seconds = lost_responses(cluster.bootstrap, Path(tmp) / "lost", args.rollbacks)
            outcomes.append(Outcome("lost gRPC reply", count, seconds))
            print("running 16+N watchers ...", flush=True)
            count, seconds = watchers_during_rollbacks(
                cluster.bootstrap, Path(tmp) / "watchers", args.rollbacks, args.watchers
            )
            outcomes.append(Outcome("16+N watchers", count, seconds))
        finally:
            for node in cluster.nodes:
                node.crash()
        single = LocalKafkaCluster(
            home=Path(tmp) / "kafka-single", brokers=1, node_ports=[(ports[6], ports[7])]
        )
        print("starting a single broker ...", flush=True)
        single.start(timeout=300)
        try:
            print("running only broker SIGKILL ...", flush=True)
            outcomes.append(
                run_scenario(
                    single, Path(tmp), "only broker SIGKILL", only_broker_sigkill, args.events
                )
            )
        finally:
            for node in single.nodes:
                node.crash()
    baseline = outcomes[0].recover_seconds
    print()
    print(
        f"{'scenario':<20} {'acknowledged':>12} {'applied':>8} {'lost':>5} {'doubled':>8} "
        f"{'recover s':>10} {'vs no fault':>12}"
    )
    for outcome in outcomes:
        c = outcome.count
        print(
            f"{outcome.scenario:<20} {c.acknowledged:>12} {c.applied:>8} {c.lost:>5} "
            f"{c.doubled:>8} {outcome.recover_seconds:>10.1f} "
            f"{outcome.recover_seconds - baseline:>+11.1f}s"
        )
    survived = sum(o.survived for o in outcomes)
    lost = sum(o.count.lost for o in outcomes)
    doubled = sum(o.count.doubled for o in outcomes)
    print(f"faults survived: {survived}/{len(outcomes)}, lost: {lost}, doubled: {doubled}")
    sys.exit(0 if survived == len(outcomes) else 1)


if __name__ == "__main__":
    main()
