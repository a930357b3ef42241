"""Health and RollbackModel latency with 0 and with 100 open WatchAlias streams on one registry.

Issue 14's bar: RollbackModel and Health answer within 1 s with 100 open WatchAlias streams.
The registry runs as its own process on a real broker. For each phase (0 watchers, then
``--watchers``) a fresh model gets ``--trials`` + 1 checkpoints promoted in turn through events
(CheckpointReady + EvaluationCompleted, as the trainer and evaluator publish them); a second
process opens the watchers on that model's production alias and reads every move. Then each
trial times one RollbackModel (production one step back: every watcher is woken and sent the
move) and ``--health-per-trial`` Health.Check calls, the first right after the rollback while the
watchers are being served. The watcher process checks each watcher saw every rollback.

The watchers share one client (one loopback peer), so the per-client stream cap
(``TUNELINE_GRPC_MAX_STREAMS_PER_CLIENT``, default 64) is raised to the watcher count for the
run; every other capacity setting is as shipped.

    .venv/bin/python bench/watch_capacity.py [--watchers 100] [--trials 30] [--bootstrap ...]

Without ``--bootstrap`` (or ``TUNELINE_KAFKA_BOOTSTRAP``) a local KRaft broker is started.
Goal: the max of each call under 1 s with the watchers open; the ratio to the 0-watcher phase of
the same run is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.rollback_latency import (
    nearest_rank,
    promote_in_turn,
    registry_process,
    wait_until_serving,
)
from shared.events import KafkaEventPublisher
from shared.grpc import ClientSecurity, create_channel
from tuneline.client.registry import RegistryClient
from tuneline.devtools.kafka import LocalKafka, free_port

GOAL_SECONDS = 1.0
#: A hang guard, not a measure.
WAIT_SECONDS = 120.0
#: Health.Check calls timed after each rollback (the first while the watchers are served).
HEALTH_PER_TRIAL = 5


@dataclass
class Phase:
    watchers: int
    health: list[float] = field(default_factory=list)
    rollback: list[float] = field(default_factory=list)
    moves_seen: list[int] = field(default_factory=list)


def hold_watchers(target: str, alias: str, count: int, moves: int) -> None:
    """The watcher process: open ``count`` watches, say ``open``, read ``moves`` moves on each,
    print how many each saw (JSON)."""
    with RegistryClient(target, timeout=WAIT_SECONDS, security=ClientSecurity()) as client:
        streams: list[Any] = [client.watch_alias(alias) for _ in range(count)]  # generators
        for stream in streams:
            next(stream)  # the alias as it is: the stream is open and holds its slot
        print("open", flush=True)
        seen = [0] * count

        def read(index: int) -> None:
            for message in streams[index]:
                if message.HasField("move"):
                    seen[index] += 1
                    if seen[index] == moves:
                        return

        readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(count)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(WAIT_SECONDS)
        print(json.dumps(seen), flush=True)
        for stream in streams:
            stream.close()


def run_phase(
    target: str, client: RegistryClient, publisher: KafkaEventPublisher, phase: Phase, trials: int
) -> None:
    model_id = f"cap-{phase.watchers}-{uuid.uuid4().hex[:8]}"
    promote_in_turn(client, publisher, model_id, [f"j{i}" for i in range(trials + 1)])
    holder = None
    if phase.watchers:
        holder = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--hold",
                target,
                f"models/{model_id}/aliases/production",
                str(phase.watchers),
                str(trials),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        line = holder.stdout.readline().strip()
        if line != "open":
            raise RuntimeError(f"the watcher process did not open its streams: {line!r}")
    with create_channel(target, default_timeout=WAIT_SECONDS, security=ClientSecurity()) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        request = health_pb2.HealthCheckRequest()
        for _ in range(5):  # untimed warm-up: the connection opens
            health.Check(request)
        for trial in range(trials):
            started = time.perf_counter()
            client.rollback_model(f"models/{model_id}", reason=f"capacity trial {trial}")
            phase.rollback.append(time.perf_counter() - started)
            for _ in range(HEALTH_PER_TRIAL):
                started = time.perf_counter()
                status = health.Check(request).status
                phase.health.append(time.perf_counter() - started)
                assert status == health_pb2.HealthCheckResponse.SERVING
    if holder is not None:
        assert holder.stdout is not None
        phase.moves_seen = json.loads(holder.stdout.readline())
        holder.wait(WAIT_SECONDS)


def _figures(values: list[float]) -> str:
    p50, p99 = statistics.median(values), nearest_rank(values, 0.99)
    return f"{p50 * 1000:8.1f} {p99 * 1000:8.1f} {max(values) * 1000:8.1f}"


def report(phases: list[Phase], trials: int) -> bool:
    base = phases[0]
    print(
        f"registry latency with open WatchAlias streams ({trials} rollbacks, "
        f"{HEALTH_PER_TRIAL} Health.Check after each)"
    )
    print(f"{'call':<14} {'watchers':>8} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  ratio")
    ok = True
    for name in ("Health.Check", "RollbackModel"):
        key = "health" if name.startswith("Health") else "rollback"
        base_p99 = nearest_rank(getattr(base, key), 0.99)
        for phase in phases:
            values: list[float] = getattr(phase, key)
            ratio = nearest_rank(values, 0.99) / base_p99
            print(
                f"{name:<14} {phase.watchers:>8} {len(values):>5} {_figures(values)}  "
                f"p99 x{ratio:.2f}"
            )
            ok = ok and max(values) < GOAL_SECONDS
    for phase in phases[1:]:
        complete = phase.moves_seen == [trials] * phase.watchers
        print(
            f"{phase.watchers} watchers saw every rollback: {'yes' if complete else 'NO'} "
            f"(moves per watcher: min {min(phase.moves_seen, default=0)}, "
            f"max {max(phase.moves_seen, default=0)}, expected {trials})"
        )
        ok = ok and complete
    print(f"goal: every call under {GOAL_SECONDS * 1000:.0f} ms: {'PASS' if ok else 'FAIL'}")
    return ok


def run(bootstrap: str, watchers: int, trials: int) -> bool:
    cap = str(max(64, watchers))
    with (
        tempfile.TemporaryDirectory(prefix="watch-capacity-") as home,
        registry_process(bootstrap, Path(home), {"TUNELINE_GRPC_MAX_STREAMS_PER_CLIENT": cap}) as (
            target,
            _,
        ),
    ):
        publisher = KafkaEventPublisher(bootstrap, client_id="bench-watch-capacity")
        try:
            with RegistryClient(target, timeout=WAIT_SECONDS, security=ClientSecurity()) as client:
                wait_until_serving(client)
                phases = [Phase(0), Phase(watchers)]
                for phase in phases:
                    print(f"phase: {phase.watchers} watchers ...", flush=True)
                    run_phase(target, client, publisher, phase, trials)
        finally:
            publisher.close()
    return report(phases, trials)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--hold":
        target, alias, count, moves = sys.argv[2:]
        hold_watchers(target, alias, int(count), int(moves))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--bootstrap", default=os.environ.get("TUNELINE_KAFKA_BOOTSTRAP"))
    args = parser.parse_args()
    if args.bootstrap:
        ok = run(args.bootstrap, args.watchers, args.trials)
    else:
        with tempfile.TemporaryDirectory(prefix="watch-capacity-kafka-") as kafka_home:
            kafka = LocalKafka(home=Path(kafka_home), port=free_port(), controller_port=free_port())
            kafka.start(timeout=180)
            try:
                ok = run(kafka.bootstrap, args.watchers, args.trials)
            finally:
                kafka.stop()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
