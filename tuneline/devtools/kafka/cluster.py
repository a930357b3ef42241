"""Several local KRaft nodes, each a broker and a voter of one static controller quorum."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneline.devtools.kafka.broker import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PORT,
    LocalKafka,
    new_cluster_id,
)
from tuneline.devtools.kafka.jars import default_pom
from tuneline.devtools.kafka.probes import LOOPBACK

#: Ports of node ``i`` (0-based) of a cluster: ``port + 2 i`` and ``controller_port + 2 i``, so
#: the default 19092/19093 give brokers 19092, 19094, 19096 and controllers 19093, 19095, 19097.
CLUSTER_PORT_STRIDE = 2
#: Heap (and compiler) of each node of a cluster: three JVMs share a development machine, and
#: the C1 compiler alone starts them much sooner on few cores (throughput matters little here).
DEFAULT_CLUSTER_HEAP = "-Xmx256m -Xms128m -XX:TieredStopAtLevel=1"
_CLUSTER_STATE = "cluster.json"
# How fast the controllers notice a dead broker and move its partitions' leadership: a few
# seconds instead of Kafka's 9 s, so a killed broker costs the fault suite little time.
_CLUSTER_FAILOVER = {
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
    "replica.lag.time.max.ms": "5000",
}


@dataclass
class LocalKafkaCluster:
    """``brokers`` KRaft nodes on loopback, each a broker and a voter of one static quorum.

    Node ``i`` (ids 1..n) lives in ``home/node-<i>``; internal topics get a replica per node
    (at most 3) and ``min.insync.replicas`` 2 where there are 3. One node can be crashed
    (:meth:`LocalKafka.crash`) and started again (:meth:`start_node`) while the others serve:
    a majority of the controller quorum survives the loss of one of three.
    """

    home: Path
    brokers: int = 3
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    heap: str = DEFAULT_CLUSTER_HEAP
    cache_dir: Path | None = None
    pom: Path = field(default_factory=default_pom)
    #: Extra broker settings for every node, applied over the generated ones.
    overrides: dict[str, str] = field(default_factory=dict)
    #: Ports given explicitly, one ``(broker, controller)`` pair per node (tests pick free
    #: ones); by default they follow :data:`CLUSTER_PORT_STRIDE`.
    node_ports: list[tuple[int, int]] | None = None
    startup_seconds: float | None = field(default=None, init=False)
    nodes: list[LocalKafka] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        self.home = Path(self.home).expanduser().absolute()
        ports = self.node_ports or [
            (self.port + CLUSTER_PORT_STRIDE * i, self.controller_port + CLUSTER_PORT_STRIDE * i)
            for i in range(self.brokers)
        ]
        if len(ports) != self.brokers:
            raise ValueError(f"{self.brokers} brokers need {self.brokers} port pairs")
        voters = ",".join(
            f"{i + 1}@{LOOPBACK}:{controller}" for i, (_, controller) in enumerate(ports)
        )
        overrides = {**_CLUSTER_FAILOVER, **self.overrides}
        self.nodes = [
            LocalKafka(
                home=self.home / f"node-{i + 1}",
                port=port,
                controller_port=controller,
                heap=self.heap,
                cache_dir=self.cache_dir,
                pom=self.pom,
                overrides=dict(overrides),
                node_id=i + 1,
                quorum_voters=voters,
                internal_replication_factor=min(3, self.brokers),
            )
            for i, (port, controller) in enumerate(ports)
        ]

    @property
    def bootstrap(self) -> str:
        """Every node's broker address, comma-separated: clients survive any one being down."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def running_bootstrap(self) -> str:
        """The running nodes' broker addresses: an admin client that bootstraps from a dead
        node's address gives up instead of trying the next."""
        return ",".join(node.bootstrap for node in self.nodes if node.running_pid() is not None)

    @property
    def state_path(self) -> Path:
        return self.home / _CLUSTER_STATE

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    def _cluster_id(self) -> str:
        """The id every node is formatted with: kept in ``cluster.json`` from the first start."""
        try:
            known = json.loads(self.state_path.read_text()).get("cluster_id")
        except (OSError, ValueError):
            known = None
        return str(known) if known else new_cluster_id()

    def start(self, timeout: float = 180.0) -> str:
        """Launch every node that is not running, wait until all serve; return the bootstrap."""
        first = self.nodes[0]
        first.check_java_version()
        first.provision()
        cluster_id = self._cluster_id()
        self.home.mkdir(parents=True, exist_ok=True)
        self._write_state(cluster_id)
        began = time.monotonic()
        launched: list[tuple[LocalKafka, int]] = []
        try:
            self._format(cluster_id)
            for node in self.nodes:
                pid = node.running_pid()
                if pid is not None:
                    node._check_running_bootstrap(pid)
                launched.append((node, pid if pid is not None else node.launch(cluster_id)))
            for node, pid in launched:
                node.wait_started(pid, began, began + timeout)
        except BaseException:
            self.stop(timeout=5.0)
            raise
        self.startup_seconds = round(time.monotonic() - began, 3)
        self._write_state(cluster_id)
        return self.bootstrap

    def _format(self, cluster_id: str) -> None:
        """Format the stopped nodes' storage side by side (one short JVM each)."""
        stopped = [node for node in self.nodes if node.running_pid() is None]
        for node in stopped:
            node.write_config()
        with ThreadPoolExecutor(max_workers=len(stopped) or 1) as pool:
            for done in [pool.submit(node.format_storage, cluster_id) for node in stopped]:
                done.result()

    def start_node(self, node_id: int, timeout: float = 120.0) -> None:
        """Bring one (crashed or stopped) node back with its data; wait until it serves."""
        node = self.node(node_id)
        if node.running_pid() is not None:
            return
        began = time.monotonic()
        pid = node.launch(self._cluster_id())
        node.wait_started(pid, began, began + timeout)

    def _write_state(self, cluster_id: str) -> None:
        self.state_path.write_text(
            json.dumps(
                {
                    "cluster_id": cluster_id,
                    "brokers": self.brokers,
                    "bootstrap": self.bootstrap,
                    "nodes": [
                        {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port}
                        for n in self.nodes
                    ],
                    "startup_seconds": self.startup_seconds,
                },
                indent=2,
            )
        )

    def running(self) -> list[int]:
        """Ids of the nodes that run."""
        return [node.node_id for node in self.nodes if node.running_pid() is not None]

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout``); ``True`` if any ran.

        The nodes get SIGTERM together: a broker that shuts down cleanly waits for the
        controller quorum, which its peers stopping one by one would take away from it.
        """
        pids = [(node, node.running_pid()) for node in self.nodes]
        for _, pid in pids:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for node, _ in pids:
            node.stop(timeout=timeout)
        return any(pid is not None for _, pid in pids)

    @classmethod
    def from_home(cls, home: Path, **settings: Any) -> LocalKafkaCluster | None:
        """The cluster ``home`` holds (from its ``cluster.json``), else ``None``."""
        try:
            state = json.loads((Path(home) / _CLUSTER_STATE).read_text())
        except (OSError, ValueError):
            return None
        ports = [(int(n["port"]), int(n["controller_port"])) for n in state.get("nodes", [])]
        if not ports:
            return None
        return cls(home=Path(home), brokers=len(ports), node_ports=ports, **settings)
