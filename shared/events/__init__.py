"""Events on Kafka: envelope, publisher, transactional outbox and the consumer loop."""

from shared.events.consumer import (
    ConsumerLoop,
    FailureKind,
    GroupMembershipLost,
    ReceivedEvent,
    Subscription,
    TransientError,
    classify_failure,
)
from shared.events.envelope import Envelope, EnvelopeError, dlq_topic_for, topic_for
from shared.events.metrics import EventMetrics
from shared.events.outbox import EventTooLarge, OutboxRelay, stage_event
from shared.events.publisher import MAX_EVENT_BYTES, KafkaEventPublisher, ensure_topics
from shared.events.tables import DeadLetteredRecord, OutboxEvent, PlumbingBase, ProcessedEvent

__all__ = [
    "MAX_EVENT_BYTES",
    "ConsumerLoop",
    "DeadLetteredRecord",
    "Envelope",
    "EnvelopeError",
    "EventMetrics",
    "EventTooLarge",
    "FailureKind",
    "GroupMembershipLost",
    "KafkaEventPublisher",
    "OutboxEvent",
    "OutboxRelay",
    "PlumbingBase",
    "ProcessedEvent",
    "ReceivedEvent",
    "Subscription",
    "TransientError",
    "classify_failure",
    "dlq_topic_for",
    "ensure_topics",
    "stage_event",
    "topic_for",
]
