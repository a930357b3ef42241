"""One real three-broker KRaft cluster for the whole fault suite.

Always its own cluster, even where ``TUNELINE_KAFKA_BOOTSTRAP`` names a broker: the suite kills
and stops brokers, which it must own. Three JVMs with small heaps on free loopback ports.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tuneline.devtools.kafka import LocalKafkaCluster, free_port

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
