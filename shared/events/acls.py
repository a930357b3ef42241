"""Which Kafka topics each service may write and read: the broker ACLs behind trusted events.

A service's SCRAM user (named after the service) may

* WRITE only the topics of the events it produces (:data:`shared.events.producers.EVENT_PRODUCERS`)
  and the DLQs of the topics it consumes (its consumer loop dead-letters there);
* READ the topics it consumes, in its own consumer group ``tuneline-<service>``;
* DESCRIBE, DESCRIBE_CONFIGS and CREATE every topic it ensures at start (the ones it writes
  or reads and their ``.dlq`` twins, as :func:`shared.events.publisher.ensure_topics` does):
  creating a topic gives no right to write it.

With the broker's authorizer denying everything else (``allow.everyone.if.no.acl.found=false``),
a client holding the dataset service's password cannot write
``tuneline.trainer.v1.CheckpointReady``; consumers still check ``ce_source``
(``shared.events.producers``) for what slips past.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from kafka import KafkaAdminClient
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ResourcePattern,
    ResourceType,
)

from shared.events.envelope import dlq_topic_for
from shared.events.producers import EVENT_PRODUCERS, service_source

#: Every service with a Kafka user, in pipeline order.
SERVICES = ("dataset", "splitter", "trainer", "evaluator", "registry", "serving")

#: Service → the event types it subscribes to (its ``entrypoints`` subscriptions; a unit test
#: keeps the two equal).
EVENT_CONSUMERS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "dataset": frozenset(),
        "splitter": frozenset({"tuneline.dataset.v1.DatasetVersioned"}),
        "trainer": frozenset(
            {"tuneline.splitter.v1.SplitCreated", "tuneline.dataset.v1.DatasetAudited"}
        ),
        "evaluator": frozenset(
            {
                "tuneline.trainer.v1.CheckpointReady",
                "tuneline.splitter.v1.SplitCreated",
                "tuneline.dataset.v1.DatasetVersioned",
            }
        ),
        "registry": frozenset(
            {
                "tuneline.trainer.v1.CheckpointReady",
                "tuneline.evaluator.v1.EvaluationCompleted",
                "tuneline.evaluator.v1.RegressionDetected",
            }
        ),
        "serving": frozenset(
            {"tuneline.registry.v1.ModelPromoted", "tuneline.registry.v1.ModelRolledBack"}
        ),
    }
)


def kafka_principal(username: str) -> str:
    """The broker's principal of a SCRAM user: ``User:<name>``."""
    return f"User:{username}"


@dataclass(frozen=True)
class ServiceTopicGrants:
    """What one service's Kafka user may do."""

    service: str
    #: Topics it may write: its own events', and the DLQs of what it consumes.
    writes: frozenset[str]
    #: Topics it may read.
    reads: frozenset[str]
    #: Topics it may see, and create when missing (everything it ensures at start).
    ensures: frozenset[str]
    #: Its consumer group.
    group: str

    @property
    def principal(self) -> str:
        return kafka_principal(self.service)


def service_topic_grants(service: str) -> ServiceTopicGrants:
    """:class:`ServiceTopicGrants` of ``service`` from the producer and consumer tables."""
    if service not in EVENT_CONSUMERS:
        raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    produces = {t for t, source in EVENT_PRODUCERS.items() if source == service_source(service)}
    consumes = set(EVENT_CONSUMERS[service])
    touched = produces | consumes
    return ServiceTopicGrants(
        service=service,
        writes=frozenset(produces | {dlq_topic_for(t) for t in consumes}),
        reads=frozenset(consumes),
        ensures=frozenset(touched | {dlq_topic_for(t) for t in touched}),
        group=f"tuneline-{service}",
    )


def service_acls(grants: ServiceTopicGrants) -> list[ACL]:
    """The broker ACLs (ALLOW, any host) that give ``grants`` and nothing more."""

    def allow(operation: ACLOperation, kind: ResourceType, name: str) -> ACL:
        return ACL(
            principal=grants.principal,
            host="*",
            operation=operation,
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(kind, name),
        )

    acls = [allow(ACLOperation.WRITE, ResourceType.TOPIC, t) for t in sorted(grants.writes)]
    acls += [allow(ACLOperation.READ, ResourceType.TOPIC, t) for t in sorted(grants.reads)]
    for topic in sorted(grants.ensures):
        acls += [
            allow(ACLOperation.DESCRIBE, ResourceType.TOPIC, topic),
            allow(ACLOperation.DESCRIBE_CONFIGS, ResourceType.TOPIC, topic),
            allow(ACLOperation.CREATE, ResourceType.TOPIC, topic),
        ]
    if grants.reads:
        acls.append(allow(ACLOperation.READ, ResourceType.GROUP, grants.group))
    return acls


def create_service_acls(
    admin: KafkaAdminClient, services: Iterable[str] = SERVICES
) -> list[ServiceTopicGrants]:
    """Create every ACL of ``services`` with ``admin`` (a super user's client); raises on the
    first the broker refuses. Creating an ACL that exists is a no-op, so this can run at every
    start."""
    granted = [service_topic_grants(service) for service in services]
    acls = [acl for grants in granted for acl in service_acls(grants)]
    result = admin.create_acls(acls)
    failed = result.get("failed") if isinstance(result, dict) else None
    if failed:  # kafka-python lists the errors (not which ACL)
        raise RuntimeError(f"the broker refused {len(failed)} ACL(s), first: {failed[0]!r}")
    return granted
