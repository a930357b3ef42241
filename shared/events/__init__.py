"""Events on Kafka: envelope, publisher, transactional outbox and the consumer loop."""

from shared.events.consumer import ConsumerLoop, ReceivedEvent, Subscription
from shared.events.envelope import Envelope, EnvelopeError, dlq_topic_for, topic_for
from shared.events.metrics import EventMetrics
from shared.events.outbox import OutboxRelay, stage_event
from shared.events.publisher import KafkaEventPublisher, ensure_topics
from shared.events.tables import OutboxEvent, PlumbingBase, ProcessedEvent

__all__ = [
    "ConsumerLoop",
    "Envelope",
    "EnvelopeError",
    "EventMetrics",
    "KafkaEventPublisher",
    "OutboxEvent",
    "OutboxRelay",
    "PlumbingBase",
    "ProcessedEvent",
    "ReceivedEvent",
    "Subscription",
    "dlq_topic_for",
    "ensure_topics",
    "stage_event",
    "topic_for",
]
