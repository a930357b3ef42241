"""The registry's Prometheus metrics, on the service's own registry.

Counters and the time-to-rollback histogram are updated after commits. The gauges that
describe current state — which checkpoint each model serves, its live quality and floor — are
read from the database at scrape time by :class:`RegistryStateCollector`, so they are right
after a restart and never keep a series for a checkpoint that has left production (an alert on
live quality resolves by itself once production rolls back).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.tables import ModelRow
from services.registry.domain.live_quality import judge_live_quality
from tuneline.registry.v1 import resources_pb2

#: From a sub-second event-driven rollback to an alert that waited out its ``for:`` and
#: Alertmanager's group wait.
#: The ``owner`` label of a model without an owner team: Alertmanager's default route takes it.
UNOWNED = "unowned"
_ROLLBACK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def _short(name: str) -> str:
    """``models/m/checkpoints/c`` → ``c``; ``models/m`` → ``m``: ids make readable labels."""
    return name.rsplit("/", 1)[-1]


class RegistryMetrics:
    """Promotions, rollbacks, regressions and alerts seen, and time from trigger to rollback."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.promotions = Counter(
            "tuneline_model_promotions_total",
            "Moves of a model's production alias forward (promotion, approval, manual).",
            ("model", "trigger"),
            registry=registry,
        )
        self.rollbacks = Counter(
            "tuneline_model_rollbacks_total",
            "Rollbacks of a model's production alias, by trigger (regression, alert, manual).",
            ("model", "trigger"),
            registry=registry,
        )
        self.rollback_seconds = Histogram(
            "tuneline_model_rollback_seconds",
            "Seconds from the trigger (regression found, alert started, RPC received) to the "
            "committed rollback.",
            ("trigger",),
            buckets=_ROLLBACK_BUCKETS,
            registry=registry,
        )
        self.regressions = Counter(
            "tuneline_registry_regressions_received_total",
            "RegressionDetected events received, by what the registry did "
            "(rolled_back, not_production, no_rollback_target, unknown_model, duplicate, "
            "frozen).",
            ("model", "outcome"),
            registry=registry,
        )
        self.alerts = Counter(
            "tuneline_registry_alerts_received_total",
            "Alerts received on the Alertmanager webhook, by what the registry did.",
            ("outcome",),
            registry=registry,
        )
        self.webhook_requests = Counter(
            "tuneline_registry_webhook_requests_total",
            "HTTP requests to the Alertmanager webhook, by status code.",
            ("code",),
            registry=registry,
        )
        self.checkpoints_registered = Counter(
            "tuneline_registry_checkpoints_registered_total",
            "Checkpoints registered from CheckpointReady.",
            ("model",),
            registry=registry,
        )
        self.artifacts_refused = Counter(
            "tuneline_registry_artifacts_refused_total",
            "Checkpoint artifacts the registry refused to trust, by check: location (a "
            "CheckpointReady URI outside the trainer's artifact root; the event is REFUSED), "
            "release_location (an EvaluationCompleted merged release URI outside the "
            "evaluator's artifact root; the event is REFUSED) or sha256 (the artifact "
            "re-hashed before a move differs; nothing moves).",
            ("model", "check"),
            registry=registry,
        )
        self.verdicts_refused = Counter(
            "tuneline_registry_verdicts_refused_total",
            "PASSED EvaluationCompleted events the evaluator did not confirm (GetEvaluation), "
            "by check: not_found (it has no such evaluation) or mismatch (it stored another "
            "checkpoint, verdict, metrics, comparisons or parity). The event is REFUSED.",
            ("model", "check"),
            registry=registry,
        )
        self.events_deferred = Counter(
            "tuneline_registry_events_deferred_total",
            "Events kept aside: PARKED until their model or checkpoint exists, or REFUSED.",
            ("event_type", "status"),
            registry=registry,
        )

    def record_rollback(self, model: str, trigger_label: str, seconds: float) -> None:
        self.rollbacks.labels(_short(model), trigger_label).inc()
        self.rollback_seconds.labels(trigger_label).observe(max(0.0, seconds))

    def record_promotion(self, model: str, trigger_label: str) -> None:
        self.promotions.labels(_short(model), trigger_label).inc()


class RegistryStateCollector(Collector):
    """Scrape-time gauges read from the database: production per model, live quality (and its
    confidence sequence, for counted reports), floors."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "tuneline_model_production_info",
                "1 for the checkpoint each model's production alias points at.",
                labels=("model", "checkpoint"),
            ),
            GaugeMetricFamily(
                "tuneline_model_live_quality",
                "Latest live quality reported for the production checkpoint (ReportLiveQuality).",
                labels=("model", "checkpoint", "metric", "slice"),
            ),
            GaugeMetricFamily(
                "tuneline_model_live_quality_below_floor",
                "1 when the production checkpoint is past the model's floor for that metric: "
                "counted live quality whose confidence sequence's upper bound is below the "
                "floor (after the minimum of trials), or a bare reported value past it.",
                labels=("model", "checkpoint", "metric", "slice"),
            ),
            GaugeMetricFamily(
                "tuneline_model_live_quality_lower_bound",
                "Lower bound of the always-valid confidence sequence of the production "
                "checkpoint's counted live success rate.",
                labels=("model", "checkpoint", "metric", "slice"),
            ),
            GaugeMetricFamily(
                "tuneline_model_live_quality_upper_bound",
                "Upper bound of the always-valid confidence sequence of the production "
                "checkpoint's counted live success rate (compared with the floor).",
                labels=("model", "checkpoint", "metric", "slice"),
            ),
            GaugeMetricFamily(
                "tuneline_model_live_quality_trials",
                "Labelled live outcomes counted for the production checkpoint so far.",
                labels=("model", "checkpoint", "metric", "slice"),
            ),
            GaugeMetricFamily(
                "tuneline_model_quality_floor",
                "A model's floor per metric (its gate's min_absolute_score; a ceiling for loss).",
                labels=("model", "metric"),
            ),
            GaugeMetricFamily(
                "tuneline_model_owner_info",
                "1 per model, labelled with its owner (team), contact and runbook: alert rules "
                "join on `model` to give every model alert an `owner` label.",
                labels=("model", "owner", "contact", "runbook"),
            ),
            GaugeMetricFamily(
                "tuneline_model_automation_frozen",
                "1 per model whose automation the rollback circuit breaker froze (too many "
                "automatic rollbacks in its window): nothing automatic moves its production "
                "until a person unfreezes it.",
                labels=("model",),
            ),
            GaugeMetricFamily(
                "tuneline_registry_parked_events",
                "Events waiting for their model or checkpoint to be registered.",
            ),
        )

    def collect(self) -> Iterator[Metric]:
        production, live, below, lower, upper, trials, floors, owners, frozen, parked = (
            self._families()
        )
        with self._sessions() as session:
            repo = RegistryRepository(session)
            for alias in repo.production_aliases():
                model, checkpoint = _short(alias.model), _short(alias.checkpoint)
                production.add_metric([model, checkpoint], 1)
                counted = {
                    (counts.metric, counts.slice): counts
                    for counts in repo.live_counts_of(alias.model, alias.checkpoint)
                }
                for report in repo.live_quality_of(alias.model, alias.checkpoint):
                    labels = [model, checkpoint, report.metric, report.slice]
                    live.add_metric(labels, report.value)
                    counts = counted.get((report.metric, report.slice))
                    # once counted, the confidence sequence decides, whatever the last report
                    below_floor = report.below_floor
                    if counts is not None:
                        sequence = judge_live_quality(counts.successes, counts.trials, report.floor)
                        below_floor = sequence.below_floor
                    below.add_metric(labels, 1 if below_floor else 0)
                for (metric, slice_name), counts in counted.items():
                    labels = [model, checkpoint, metric, slice_name]
                    lower.add_metric(labels, counts.lower_bound)
                    upper.add_metric(labels, counts.upper_bound)
                    trials.add_metric(labels, counts.trials)
            for row in session.query(ModelRow).order_by(ModelRow.name):
                definition = resources_pb2.Model.FromString(row.definition)
                for gate in definition.gate_policy.metrics:
                    if gate.HasField("min_absolute_score"):
                        floors.add_metric([_short(row.name), gate.metric], gate.min_absolute_score)
                owner = definition.owner
                # a model nobody claimed still gets a route: the platform team's catch-all
                owners.add_metric(
                    [_short(row.name), owner.team or UNOWNED, owner.contact, owner.runbook_uri], 1
                )
            for model_name in repo.frozen_models():
                frozen.add_metric([_short(model_name)], 1)
            parked.add_metric([], repo.count_parked())
        yield from (production, live, below, lower, upper, trials, floors, owners, frozen, parked)
