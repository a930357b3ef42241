"""A real Apache Kafka (KRaft) broker, or a three-node cluster, for local development and tests.

Kafka's jars are resolved from Maven Central with Maven (``deploy/kafka/pom.xml``) once and cached;
the broker then runs as ``java -cp '<libs>/*' kafka.Kafka server.properties``, exactly as Kafka's
own ``bin/kafka-server-start.sh`` does, in combined broker+controller mode on loopback ports.

All state (configuration, data, logs, pid file) lives under one ``home`` directory, so a broker
started by one process (``tuneline dev kafka start``) can be found and stopped by another.

:class:`LocalKafkaCluster` runs several such nodes (``home/node-<id>``), each a broker and a
voter of one static controller quorum, from the same jars: the replicated set-up (RF 3,
``min.insync.replicas=2``) the fault-injection suite kills brokers of.

The modules, one seam each: :mod:`~tuneline.devtools.kafka.jars` (the jar cache, Java and
Maven), :mod:`~tuneline.devtools.kafka.broker` (:class:`LocalKafka`, one node),
:mod:`~tuneline.devtools.kafka.security` (:class:`BrokerSecurity`: TLS, SCRAM users, ACLs),
:mod:`~tuneline.devtools.kafka.cluster` (:class:`LocalKafkaCluster`),
:mod:`~tuneline.devtools.kafka.probes` (ports, pids, the metadata probe) and
:mod:`~tuneline.devtools.kafka.errors`. The ``tuneline dev kafka`` commands live in
:mod:`tuneline.cli.dev_kafka`. This package's names below are its public surface.
"""

from tuneline.devtools.kafka.broker import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_HEAP,
    DEFAULT_PORT,
    KafkaStatus,
    LocalKafka,
    new_cluster_id,
)
from tuneline.devtools.kafka.cluster import (
    CLUSTER_PORT_STRIDE,
    DEFAULT_CLUSTER_HEAP,
    LocalKafkaCluster,
)
from tuneline.devtools.kafka.errors import (
    KafkaPrerequisiteError,
    KafkaProvisionError,
    KafkaStartError,
    LocalKafkaError,
)
from tuneline.devtools.kafka.jars import (
    CACHE_ENV,
    DEFAULT_KAFKA_VERSION,
    MIN_JAVA_MAJOR,
    POM_ENV,
    KafkaJars,
    default_cache_dir,
    default_pom,
    kafka_version,
)
from tuneline.devtools.kafka.probes import LOOPBACK, free_port, port_free
from tuneline.devtools.kafka.security import KAFKA_ADMIN_USER, SCRAM_MECHANISM, BrokerSecurity

__all__ = [
    "CACHE_ENV",
    "CLUSTER_PORT_STRIDE",
    "DEFAULT_CLUSTER_HEAP",
    "DEFAULT_CONTROLLER_PORT",
    "DEFAULT_HEAP",
    "DEFAULT_KAFKA_VERSION",
    "DEFAULT_PORT",
    "KAFKA_ADMIN_USER",
    "LOOPBACK",
    "MIN_JAVA_MAJOR",
    "POM_ENV",
    "SCRAM_MECHANISM",
    "BrokerSecurity",
    "KafkaJars",
    "KafkaPrerequisiteError",
    "KafkaProvisionError",
    "KafkaStartError",
    "KafkaStatus",
    "LocalKafka",
    "LocalKafkaCluster",
    "LocalKafkaError",
    "default_cache_dir",
    "default_pom",
    "free_port",
    "kafka_version",
    "new_cluster_id",
    "port_free",
]
