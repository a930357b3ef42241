"""Prometheus metrics of the event plumbing, on the service's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class EventMetrics:
    """Publishing, consuming, dead-lettering and lag, labelled by topic."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "tuneline_events_published_total",
            "Events acknowledged by Kafka (acks=all).",
            ("topic",),
            registry=registry,
        )
        self.consumed = Counter(
            "tuneline_events_consumed_total",
            "Events taken off Kafka, by outcome (applied, duplicate, dead_lettered).",
            ("topic", "outcome"),
            registry=registry,
        )
        self.refused = Counter(
            "tuneline_events_refused_total",
            "Events refused before any effect, by reason (untrusted_source: ce_source is not "
            "the event type's producer); each also goes to the DLQ.",
            ("topic", "reason"),
            registry=registry,
        )
        self.handler_failures = Counter(
            "tuneline_event_handler_failures_total",
            "Handler attempts that raised (each retry counts).",
            ("topic",),
            registry=registry,
        )
        self.dead_lettered = Counter(
            "tuneline_events_dead_lettered_total",
            "Messages sent to a <topic>.dlq after failing every attempt or failing to decode.",
            ("topic",),
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "tuneline_event_handling_seconds",
            "Time to apply one event, including its database commit.",
            ("topic",),
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "tuneline_kafka_consumer_lag",
            "Messages between the consumer group's position and the partition's end.",
            ("topic", "partition", "group"),
            registry=registry,
        )
        self.outbox_pending = Gauge(
            "tuneline_outbox_pending_events",
            "Events committed to the outbox and not yet acknowledged by Kafka.",
            registry=registry,
        )
        self.outbox_parked = Gauge(
            "tuneline_outbox_parked_events",
            "Outbox events the relay gave up on (too large, refused); later events still flow.",
            registry=registry,
        )
        self.outbox_send_failures = Counter(
            "tuneline_outbox_send_failures_total",
            "Outbox sends that failed (each retry counts), by topic.",
            ("topic",),
            registry=registry,
        )
        self.consumer_up = Gauge(
            "tuneline_kafka_consumer_up",
            "1 while the consumer loop runs, 0 while it is down after a crash (it restarts).",
            ("group",),
            registry=registry,
        )
        self.consumer_restarts = Counter(
            "tuneline_kafka_consumer_restarts_total",
            "Times the consumer loop crashed and was restarted.",
            ("group",),
            registry=registry,
        )
