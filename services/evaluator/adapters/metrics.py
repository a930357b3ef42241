"""The evaluator's Prometheus metrics, on the service's own registry.

Counters, the duration histogram and the score gauges are updated after an evaluation's
result is committed. The backlog (evaluations queued or running) is read from the database at
scrape time by :class:`EvaluationBacklogCollector`, so it is right after a restart too.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from services.evaluator.adapters.repository import EvaluatorRepository
from services.evaluator.domain.evaluation import Evaluation
from services.evaluator.domain.gate import Verdict

#: From a tiny classification set on a GPU to a long generation run on a CPU.
_DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)


def _short(name: str) -> str:
    """``trainingJobs/j/checkpoints/c`` → ``j/c``; ``models/m`` → ``m``: readable labels."""
    parts = name.split("/")
    if len(parts) == 4:
        return f"{parts[1]}/{parts[3]}"
    return parts[-1]


class EvaluatorMetrics:
    """Evaluations by verdict, their duration, scores, regressions and baseline reuse."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.evaluations = Counter(
            "tuneline_evaluations_total",
            "Evaluations that became terminal, by verdict (PASSED, REGRESSED, "
            "INSUFFICIENT_DATA, FAILED).",
            ("model", "verdict"),
            registry=registry,
        )
        self.duration = Histogram(
            "tuneline_evaluation_duration_seconds",
            "Seconds an evaluation ran (worker scoring, baseline and gate), start to verdict.",
            ("task_type",),
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.score = Gauge(
            "tuneline_evaluation_score",
            'A candidate\'s metric value, overall (slice="") or per slice, on an evaluation set '
            '(evaluation_set="": the model\'s primary set).',
            ("model", "checkpoint", "metric", "slice", "evaluation_set"),
            registry=registry,
        )
        self.regressions = Counter(
            "tuneline_regressions_detected_total",
            "Regressed comparisons found by the gate (one evaluation may find several).",
            ("model", "metric", "slice"),
            registry=registry,
        )
        self.baseline_results = Counter(
            "tuneline_evaluation_baseline_results_total",
            "Baseline outcomes per evaluation set: reused from the store or computed.",
            ("source",),
            registry=registry,
        )
        self.examples_per_second = Gauge(
            "tuneline_evaluation_examples_per_second",
            "Examples the engine scored per second in the latest evaluation (loading included).",
            ("device",),
            registry=registry,
        )
        self.skipped = Counter(
            "tuneline_evaluation_checkpoints_skipped_total",
            "CheckpointReady events not evaluated because of the model's checkpoint selection.",
            ("model",),
            registry=registry,
        )

    def record_terminal(self, evaluation: Evaluation) -> None:
        """Count a terminal evaluation and publish its scores."""
        model = _short(evaluation.model)
        verdict = evaluation.verdict or Verdict.FAILED
        self.evaluations.labels(model, verdict.value).inc()
        if evaluation.start_time and evaluation.end_time:
            task = evaluation.task_type.value if evaluation.task_type else "UNKNOWN"
            self.duration.labels(task).observe(
                (evaluation.end_time - evaluation.start_time).total_seconds()
            )
        checkpoint = _short(evaluation.checkpoint.name)
        for value in evaluation.metrics:
            self.score.labels(
                model, checkpoint, value.metric, value.slice, value.evaluation_set
            ).set(value.value)
        for regression in evaluation.regressions:
            self.regressions.labels(model, regression.metric, regression.slice).inc()


class EvaluationBacklogCollector(Collector):
    """``tuneline_evaluation_backlog``: evaluations queued or running, read at scrape time."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self._sessions() as session:
            backlog = EvaluatorRepository(session).backlog()
        family = GaugeMetricFamily(
            "tuneline_evaluation_backlog", "Evaluations queued or running (not yet terminal)."
        )
        family.add_metric([], backlog)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "tuneline_evaluation_backlog", "Evaluations queued or running (not yet terminal)."
        )


def register_backlog(registry: CollectorRegistry, sessions: sessionmaker[Session]) -> None:
    registry.register(EvaluationBacklogCollector(sessions))
