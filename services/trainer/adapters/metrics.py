"""The trainer's Prometheus metrics, on the service's own registry.

Jobs by state, the queue depth and the finished runs per model with their cost are read from
the database at scrape time (always right, also after a restart); the rest is recorded by the
supervisor as workers report.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from services.trainer.adapters.repository import Pricing, TrainerRepository
from services.trainer.domain.costs import compute_cost
from services.trainer.domain.jobs import EngineFallback, JobState, SkippedRows


class _JobStates(Collector):
    """``tuneline_trainer_jobs{state}`` and ``tuneline_trainer_queue_depth`` from the database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._sessions() as session:
            counts = TrainerRepository(session).count_by_state()
        jobs = GaugeMetricFamily(
            "tuneline_trainer_jobs", "Training jobs by state.", labels=["state"]
        )
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs
        yield GaugeMetricFamily(
            "tuneline_trainer_queue_depth",
            "Jobs waiting for a device (QUEUED).",
            value=counts.get(JobState.QUEUED.value, 0),
        )


class _RunCosts(Collector):
    """``tuneline_trainer_model_runs{model}`` and ``tuneline_trainer_model_run_cost{model,
    currency}``: every finished run per target model and what they cost together, from the
    database. Both only grow, so ``delta`` over a window is the runs and the cost of that
    window, and their ratio the cost per run (``tuneline:model_cost_per_run:1d``)."""

    def __init__(self, sessions: sessionmaker[Session], pricing: Pricing) -> None:
        self._sessions = sessions
        self._pricing = pricing

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._sessions() as session:
            finished = TrainerRepository(session).finished_runs_by_model()
        runs = GaugeMetricFamily(
            "tuneline_trainer_model_runs",
            "Training runs that ended (succeeded, failed or cancelled), per target model.",
            labels=["model"],
        )
        cost = GaugeMetricFamily(
            "tuneline_trainer_model_run_cost",
            "Total cost of the training runs that ended, per target model.",
            labels=["model", "currency"],
        )
        for model, count, device_seconds in finished:
            short = model.removeprefix("models/")
            runs.add_metric([short], count)
            priced = compute_cost(
                device_seconds=device_seconds,
                tokens_processed=0,
                price_per_device_hour=self._pricing.price_per_device_hour,
                currency=self._pricing.currency,
                device_type="",
            )
            cost.add_metric([short, self._pricing.currency], float(priced.amount))
        yield runs
        yield cost


class TrainerMetrics:
    """Every trainer metric, registered on ``registry``."""

    def __init__(
        self, registry: CollectorRegistry, sessions: sessionmaker[Session], pricing: Pricing
    ) -> None:
        registry.register(_JobStates(sessions))
        registry.register(_RunCosts(sessions, pricing))
        job = ["training_job"]
        self.steps = Counter(
            "tuneline_trainer_steps_total",
            "Optimizer steps completed (steps redone after a resume count again).",
            registry=registry,
        )
        self.tokens = Counter(
            "tuneline_trainer_tokens_total",
            "Non-padding tokens processed by training.",
            registry=registry,
        )
        self.tokens_per_second = Gauge(
            "tuneline_trainer_tokens_per_second",
            "Recent non-padding tokens per second of a running job.",
            job,
            registry=registry,
        )
        self.train_loss = Gauge(
            "tuneline_trainer_train_loss",
            "Latest training loss of a job (nats per token or per example).",
            job,
            registry=registry,
        )
        self.validation_loss = Gauge(
            "tuneline_trainer_validation_loss",
            "Latest validation loss of a job (nats per token or per example).",
            job,
            registry=registry,
        )
        self.device_seconds = Gauge(
            "tuneline_trainer_job_device_seconds",
            "Device time a job has used so far.",
            [*job, "device_type"],
            registry=registry,
        )
        self.cost = Gauge(
            "tuneline_trainer_job_cost",
            "Cost of a job so far, in the configured currency.",
            [*job, "currency"],
            registry=registry,
        )
        self.device_seconds_total = Counter(
            "tuneline_trainer_device_seconds_total",
            "Device time used by all training, summed over attempts.",
            registry=registry,
        )
        self.checkpoints = Counter(
            "tuneline_trainer_checkpoints_total", "Checkpoints announced.", registry=registry
        )
        self.disk_full = Counter(
            "tuneline_trainer_disk_full_total",
            "Worker attempts that ended because a write ran out of disk space (ENOSPC or a "
            "quota); each such job resumes from its last complete checkpoint after a wait.",
            registry=registry,
        )
        self.failures = Counter(
            "tuneline_trainer_job_failures_total",
            "Jobs that failed, by failure reason.",
            ["reason"],
            registry=registry,
        )
        self.worker_restarts = Counter(
            "tuneline_trainer_worker_restarts_total",
            "Worker restarts, by cause: crash (a worker died and will be resumed), "
            "out_of_memory (the retry with half the micro-batch), resume (a worker started on a "
            "job that was already running, after a crash or a service restart).",
            ["cause"],
            registry=registry,
        )
        self.jobs_finished = Counter(
            "tuneline_trainer_jobs_finished_total",
            "Jobs that reached a terminal state, by state.",
            ["state"],
            registry=registry,
        )
        self.engine_fallbacks = Counter(
            "tuneline_trainer_engine_fallbacks_total",
            "Worker starts that could not use an engine feature and took a slower path, by "
            "feature (packing) and reason (unsupported_signature, kernel_error, "
            "no_attention_heads).",
            ["feature", "reason"],
            registry=registry,
        )
        self.rows_skipped = Counter(
            "tuneline_trainer_rows_skipped_total",
            "Split rows a worker start left out of training, by reason (UNMASKABLE_CHAT, "
            "NO_LOSS_TOKEN); a resumed job's worker counts them again.",
            ["reason"],
            registry=registry,
        )

    def record_worker_start(
        self, fallbacks: Sequence[EngineFallback], skipped: Sequence[SkippedRows]
    ) -> None:
        """What a worker reported when it started: fallbacks taken and rows left out."""
        for fallback in fallbacks:
            self.engine_fallbacks.labels(fallback.feature, fallback.reason).inc()
        for rows in skipped:
            self.rows_skipped.labels(rows.reason.value).inc(rows.count)
