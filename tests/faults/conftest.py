"""One real three-broker KRaft cluster for the whole fault suite, and a single broker for the
module that kills it.

Always brokers of its own, even where ``TUNELINE_KAFKA_BOOTSTRAP`` names one: the suite kills
and stops brokers, which it must own. JVMs with small heaps on free loopback ports.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tuneline.devtools.kafka import (
    DEFAULT_CLUSTER_HEAP,
    LocalKafka,
    LocalKafkaCluster,
    free_port,
)

BROKERS = 3


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    """A running three-broker cluster (RF 3 and ``min.insync.replicas`` 2 for new topics).

    A test that crashes or stops a node starts it again before it ends, so the next test finds
    all three.
    """
    ports = _free_ports(2 * BROKERS)
    cluster = LocalKafkaCluster(
        home=tmp_path_factory.mktemp("kafka-cluster"),
        brokers=BROKERS,
        node_ports=list(zip(ports[::2], ports[1::2], strict=True)),
    )
    cluster.start(timeout=240)
    try:
        yield cluster
    finally:
        for node in cluster.nodes:  # its data is thrown away: no clean shutdown to wait for
            node.crash()


@pytest.fixture(scope="module")
def single_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A running single-node broker (topics with one replica) for one module.

    A test that crashes it starts it again (same ports, same log dirs) before it ends. Only
    the modules that ask for it start it; it has the small heap of a cluster node.
    """
    port, controller_port = _free_ports(2)
    broker = LocalKafka(
        home=tmp_path_factory.mktemp("kafka-single"),
        port=port,
        controller_port=controller_port,
        heap=DEFAULT_CLUSTER_HEAP,
    )
    broker.start(timeout=180)
    try:
        yield broker
    finally:
        broker.crash()  # its data is thrown away: no clean shutdown to wait for
