"""The serving service's Prometheus metrics, on the service's own registry.

gRPC handled totals and handling time come from the shared server interceptor; these are the
serving-specific series (DESIGN.md section 7 naming).
"""

from __future__ import annotations

import contextlib
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.serving.domain import Release

#: Latency buckets of one request at batch 1 (CPU encoders answer in milliseconds, LMs in s).
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SWAP_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServingMetrics:
    """Requests, predictions, feedback, live quality reports, swaps and refused loads."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.request_seconds = Histogram(
            "tuneline_serving_request_duration_seconds",
            "Time to answer a serving request in the service (validation, inference, "
            "bookkeeping), by method.",
            ("method",),
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "tuneline_serving_predictions_total",
            "Predictions served, by model and predicted label (empty for generations).",
            ("model", "label"),
            registry=registry,
        )
        self.checkpoint_info = Gauge(
            "tuneline_serving_checkpoint_info",
            "1 for the checkpoint each model serves now (alias revision and artifact sha256).",
            ("model", "checkpoint", "revision", "sha256"),
            registry=registry,
        )
        self.feedback = Counter(
            "tuneline_serving_feedback_total",
            "Feedback received, by model and outcome (success, failure, duplicate, "
            "unknown_prediction).",
            ("model", "outcome"),
            registry=registry,
        )
        self.live_quality_reports = Counter(
            "tuneline_serving_live_quality_reports_total",
            "Live quality count reports sent to the registry, by outcome (accepted; dropped: "
            "refused for good, e.g. the checkpoint left production; retry: not reached).",
            ("model", "outcome"),
            registry=registry,
        )
        self.swap_seconds = Histogram(
            "tuneline_serving_swap_duration_seconds",
            "Time from taking a new production release to serving it (fetch, verify, load, "
            "swap), by model.",
            ("model",),
            buckets=_SWAP_BUCKETS,
            registry=registry,
        )
        self.swaps = Counter(
            "tuneline_serving_swaps_total",
            "Production releases swapped in, by model.",
            ("model",),
            registry=registry,
        )
        self.refused_loads = Counter(
            "tuneline_serving_refused_loads_total",
            "Production releases refused (the previous model kept serving), by model and reason "
            "(sha256_mismatch, fingerprint_mismatch, artifact_unavailable, load_failed, "
            "task_mismatch).",
            ("model", "reason"),
            registry=registry,
        )
        self._info_lock = threading.Lock()

    def swapped(self, release: Release, replaced: Release | None, seconds: float) -> None:
        self.swap_seconds.labels(release.model).observe(seconds)
        self.swaps.labels(release.model).inc()
        with self._info_lock:
            if replaced is not None:
                with contextlib.suppress(KeyError):
                    self.checkpoint_info.remove(*_info_labels(replaced))
            self.checkpoint_info.labels(*_info_labels(release)).set(1)


def _info_labels(release: Release) -> tuple[str, str, str, str]:
    return (release.model, release.checkpoint, str(release.revision), release.sha256)
