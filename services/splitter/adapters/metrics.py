"""The splitter's Prometheus metrics, on the service's own registry.

Consumer lag, event handling time and DLQ counts come from the shared event plumbing
(``shared.events.metrics``); these are the splitter's own.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class SplitterMetrics:
    """Splits created, rows split, split duration, and versions not split (by reason)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.splits_created = Counter(
            "tuneline_splits_created_total",
            "Splits created, by strategy and by what asked for them (event or rpc).",
            ("strategy", "trigger"),
            registry=registry,
        )
        self.rows_split = Counter(
            "tuneline_split_rows_total",
            "Dataset rows assigned to a part by newly created splits.",
            ("strategy",),
            registry=registry,
        )
        self.split_duration = Histogram(
            "tuneline_split_duration_seconds",
            "Time to read a version's content, split it and write the manifest.",
            ("strategy",),
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.versions_not_split = Counter(
            "tuneline_split_versions_not_split_total",
            "DatasetVersioned events that made no split, by reason "
            "(auto_split_disabled, unsplittable, already_seen).",
            ("reason",),
            registry=registry,
        )
