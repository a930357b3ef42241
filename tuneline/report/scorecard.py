"""The scorecard of one model: what each checkpoint was, and how the model fares over time.

Pure computation over plain dataclasses (no gRPC, no protos): ``tuneline.report.collector``
fills :class:`ModelHistory` from the services, and :func:`build_scorecard` turns it into a
:class:`Scorecard`, which the CLI prints as tables, JSON or an HTML page.

The figures, and how each is defined:

- per checkpoint: its dataset version, the gated (primary) metric of its latest decided
  evaluation with the interval of the change against that evaluation's baseline, per-slice
  values, the train/validation loss curve of its run, the verdict, when ``production`` moved to
  it and away from it by a rollback, the training cost and device-seconds up to it, how long
  its evaluation took, and the time from the push of its dataset version to its promotion;
- over a window: the regression rate (checkpoints whose latest decided evaluation in the window
  REGRESSED, over those evaluated with a decided verdict: PASSED, REGRESSED or
  INSUFFICIENT_DATA) with a Wilson score interval; the number of rollbacks of ``production``;
  the mean time to rollback (trigger → committed move, the registry's own
  ``tuneline_model_rollback_seconds``); and the cost per run with its least-squares trend;
- per run: the trainer's estimate made when the job was created (tokens, device-seconds, cost)
  beside the actual, and the estimate's error, ``(estimate - actual) / actual`` (positive: the
  estimate was too high), with the mean absolute cost error over the window's runs. A run cut
  short (early stopping, a budget, a time limit) is compared with its estimate prorated to the
  steps it ran (the fixed time whole, the rest in proportion): what the estimator would have
  said of the run that happened, so that stopping early is not counted as its error;
- the model's owner (team, contact, runbook) and budget (per run, per month).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import fmean

from shared.stats.proportions import wilson_bounds

#: Verdicts that judge a checkpoint (FAILED means the evaluation itself broke).
DECIDED_VERDICTS = frozenset({"PASSED", "REGRESSED", "INSUFFICIENT_DATA"})
#: Alias-move triggers that are rollbacks of ``production``.
ROLLBACK_TRIGGERS = frozenset({"ROLLBACK_REGRESSION", "ROLLBACK_ALERT", "ROLLBACK_MANUAL"})
PRODUCTION = "production"


# -- what the services recorded ---------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Candidate versus baseline for one metric, overall or in one slice."""

    metric: str
    slice: str
    evaluation_set: str
    baseline: float
    candidate: float
    delta: float
    delta_lower: float
    delta_upper: float
    confidence_level: float
    example_count: int
    outcome: str


@dataclass(frozen=True)
class MetricValue:
    """A candidate's value of one metric on one slice ("" = all examples) of one set."""

    metric: str
    slice: str
    evaluation_set: str
    value: float
    example_count: int


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a checkpoint, as the evaluator recorded it."""

    name: str
    verdict: str
    complete_time: datetime | None
    baseline_checkpoint: str = ""  # empty: the bare base model
    metrics: tuple[MetricValue, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class LossPoint:
    step: int
    train_loss: float | None
    validation_loss: float | None


@dataclass(frozen=True)
class Cost:
    device_seconds: float
    amount: float
    currency: str = ""
    tokens: int = 0
    device_type: str = ""


@dataclass(frozen=True)
class Estimate:
    """What the trainer expected a run to process and cost when it was created."""

    tokens: int
    device_seconds: float
    amount: float
    currency: str = ""
    #: The steps estimated (0: not recorded), and the fixed device time per run it assumed.
    planned_steps: int = 0
    fixed_device_seconds: float = 0.0


@dataclass(frozen=True)
class TrainingRun:
    """A training job, as the trainer recorded it."""

    name: str
    state: str
    loss_curve: tuple[LossPoint, ...]
    cost: Cost
    create_time: datetime | None
    start_time: datetime | None = None
    end_time: datetime | None = None
    estimate: Estimate | None = None
    #: Why training stopped, e.g. ``MAX_STEPS``, ``BUDGET_EXHAUSTED``; "" while it runs.
    stop_reason: str = ""
    #: Optimizer steps completed (0: not recorded).
    steps_completed: int = 0


@dataclass(frozen=True)
class Owner:
    """Who answers for the model, and their runbook."""

    team: str = ""
    contact: str = ""
    runbook_uri: str = ""


@dataclass(frozen=True)
class Budget:
    """The model's spending limits (None: no limit), in ``currency``."""

    per_run: float | None = None
    per_month: float | None = None
    currency: str = ""


@dataclass(frozen=True)
class Checkpoint:
    """A registered checkpoint, as the registry recorded it (lineage and verdicts)."""

    name: str
    training_job: str
    step: int
    dataset_version: str
    create_time: datetime | None
    cost: Cost
    verdict: str = ""
    evaluations: tuple[Evaluation, ...] = ()
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias (the registry's append-only history)."""

    alias: str
    revision: int
    from_checkpoint: str
    to_checkpoint: str
    trigger: str
    move_time: datetime
    trigger_time: datetime | None = None
    actor: str = ""
    reason: str = ""

    @property
    def is_rollback(self) -> bool:
        return self.alias == PRODUCTION and self.trigger in ROLLBACK_TRIGGERS


@dataclass(frozen=True)
class ModelHistory:
    """Everything the scorecard reads about one model, from the services' own records."""

    model: str
    primary_metric: str
    checkpoints: tuple[Checkpoint, ...]
    runs: dict[str, TrainingRun]
    moves: tuple[AliasMove, ...]
    dataset_push_times: dict[str, datetime]
    #: What could not be read (a service down, a record gone), for the report to say so.
    gaps: tuple[str, ...] = ()
    owner: Owner = field(default_factory=Owner)
    budget: Budget = field(default_factory=Budget)


# -- what the scorecard says ------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided interval at ``level``."""

    estimate: float
    lower: float
    upper: float
    level: float


@dataclass(frozen=True)
class CheckpointScore:
    checkpoint: str
    training_job: str
    step: int
    dataset_version: str
    create_time: datetime | None
    verdict: str
    evaluation: str
    gated: Comparison | None
    slices: tuple[MetricValue, ...]
    loss_curve: tuple[LossPoint, ...]
    training_cost: Cost
    evaluation_seconds: float | None
    promoted_time: datetime | None
    rolled_back_time: datetime | None
    data_to_production_seconds: float | None
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class EstimateError:
    """``(estimate - actual) / actual`` per quantity; None where the actual is zero."""

    tokens: float | None
    device_seconds: float | None
    cost: float | None
    #: Set for a run cut short: the steps it ran and the steps estimated, to which the
    #: estimate was prorated before comparing.
    prorated_steps: tuple[int, int] | None = None


@dataclass(frozen=True)
class RunCost:
    run: str
    state: str
    time: datetime | None
    device_seconds: float
    amount: float
    currency: str
    tokens: int
    device_type: str
    loss_curve: tuple[LossPoint, ...]
    estimate: Estimate | None = None
    #: Only for a SUCCEEDED run with an estimate (see :func:`estimate_error`).
    estimate_error: EstimateError | None = None
    stop_reason: str = ""


@dataclass(frozen=True)
class Trend:
    """A least-squares line through values in run order: ``slope`` per run."""

    slope: float
    first: float
    last: float
    mean: float


@dataclass(frozen=True)
class RegressionRatePoint:
    """The regression rate over the window's evaluated checkpoints up to ``time``."""

    time: datetime
    checkpoint: str
    evaluated: int
    regressed: int
    rate: Interval


@dataclass(frozen=True)
class WindowSummary:
    start: datetime
    end: datetime
    evaluated: int
    regressed: int
    regression_rate: Interval | None
    rollbacks: int
    mean_time_to_rollback_seconds: float | None
    runs: int
    cost_per_run: Trend | None
    #: Mean of ``|estimate error of cost|`` over the window's finished runs with an estimate.
    mean_absolute_estimate_error: float | None = None


@dataclass(frozen=True)
class Scorecard:
    model: str
    primary_metric: str
    checkpoints: tuple[CheckpointScore, ...]
    runs: tuple[RunCost, ...]
    rollbacks: tuple[AliasMove, ...]
    window: WindowSummary
    regression_history: tuple[RegressionRatePoint, ...] = ()
    gaps: tuple[str, ...] = field(default=())
    owner: Owner = field(default_factory=Owner)
    budget: Budget = field(default_factory=Budget)


# -- statistics -------------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> Interval | None:
    """Wilson score interval of a binomial proportion; None when there are no trials."""
    if trials <= 0:
        return None
    lower, upper = wilson_bounds(successes, trials, level)
    return Interval(successes / trials, lower, upper, level)


def linear_trend(values: Sequence[float]) -> Trend | None:
    """Least-squares slope of ``values`` against their position (0, 1, 2 …)."""
    if not values:
        return None
    n = len(values)
    mean_x = (n - 1) / 2
    mean_y = fmean(values)
    spread = sum((x - mean_x) ** 2 for x in range(n))
    slope = (
        sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / spread if spread else 0.0
    )
    return Trend(slope=slope, first=values[0], last=values[-1], mean=mean_y)


def relative_error(estimate: float, actual: float) -> float | None:
    """``(estimate - actual) / actual``; None when nothing was actually spent."""
    return (estimate - actual) / actual if actual > 0 else None


def estimate_for_steps(estimate: Estimate, steps: int) -> Estimate:
    """``estimate`` prorated to a run of ``steps`` of its planned steps: its fixed device time
    whole, its tokens and the rest of its time (and cost, which is time at a price) in
    proportion."""
    if not estimate.planned_steps or steps >= estimate.planned_steps:
        return estimate
    share = steps / estimate.planned_steps
    fixed = min(estimate.fixed_device_seconds, estimate.device_seconds)
    seconds = fixed + (estimate.device_seconds - fixed) * share
    return Estimate(
        tokens=round(estimate.tokens * share),
        device_seconds=seconds,
        amount=estimate.amount * seconds / estimate.device_seconds
        if estimate.device_seconds
        else 0.0,
        currency=estimate.currency,
        planned_steps=steps,
        fixed_device_seconds=fixed,
    )


def estimate_error(run: TrainingRun) -> EstimateError | None:
    """How far the run's estimate was from what it really processed and cost: only for a run
    that SUCCEEDED (a failed or cancelled run stopped early, so its shortfall is not the
    estimate's error), and only when the currencies agree. A run that stopped before its
    planned steps is compared with the estimate prorated to the steps it ran (see
    :func:`estimate_for_steps`)."""
    if run.estimate is None or run.state != "SUCCEEDED":
        return None
    planned = run.estimate.planned_steps
    cut_short = 0 < run.steps_completed < planned
    estimate = estimate_for_steps(run.estimate, run.steps_completed) if cut_short else run.estimate
    cost_error = (
        relative_error(estimate.amount, run.cost.amount)
        if estimate.currency == run.cost.currency
        else None
    )
    return EstimateError(
        tokens=relative_error(estimate.tokens, run.cost.tokens),
        device_seconds=relative_error(estimate.device_seconds, run.cost.device_seconds),
        cost=cost_error,
        prorated_steps=(run.steps_completed, planned) if cut_short else None,
    )


def mean_time_to_rollback(rollbacks: Iterable[AliasMove]) -> float | None:
    """Mean seconds from what triggered each rollback to the committed move."""
    spans = [
        max(0.0, (move.move_time - move.trigger_time).total_seconds())
        for move in rollbacks
        if move.trigger_time is not None
    ]
    return fmean(spans) if spans else None


# -- the scorecard ----------------------------------------------------------------------------


def _in(moment: datetime | None, start: datetime, end: datetime) -> bool:
    return moment is not None and start <= moment <= end


def latest_decided(evaluations: Iterable[Evaluation]) -> Evaluation | None:
    """The newest evaluation with a decided verdict (or the newest at all when none is)."""
    ordered = sorted(evaluations, key=lambda e: (e.complete_time is not None, e.complete_time))
    decided = [e for e in ordered if e.verdict in DECIDED_VERDICTS]
    chosen = decided or ordered
    return chosen[-1] if chosen else None


def gated_comparison(evaluation: Evaluation, metric: str) -> Comparison | None:
    """The overall comparison of ``metric`` on the primary evaluation set."""
    return next(
        (
            c
            for c in evaluation.comparisons
            if c.metric == metric and not c.slice and not c.evaluation_set
        ),
        None,
    )


def _score(history: ModelHistory, checkpoint: Checkpoint) -> CheckpointScore:
    evaluation = latest_decided(checkpoint.evaluations)
    run = history.runs.get(checkpoint.training_job)
    to_production = [
        m for m in history.moves if m.alias == PRODUCTION and m.to_checkpoint == checkpoint.name
    ]
    promoted = min((m.move_time for m in to_production if not m.is_rollback), default=None)
    rolled_back = min(
        (
            m.move_time
            for m in history.moves
            if m.is_rollback and m.from_checkpoint == checkpoint.name
        ),
        default=None,
    )
    pushed = history.dataset_push_times.get(checkpoint.dataset_version)
    decided = evaluation if evaluation and evaluation.verdict in DECIDED_VERDICTS else None
    evaluation_seconds = None
    if evaluation and evaluation.start_time and evaluation.end_time:
        evaluation_seconds = (evaluation.end_time - evaluation.start_time).total_seconds()
    return CheckpointScore(
        checkpoint=checkpoint.name,
        training_job=checkpoint.training_job,
        step=checkpoint.step,
        dataset_version=checkpoint.dataset_version,
        create_time=checkpoint.create_time,
        verdict=evaluation.verdict if evaluation else (checkpoint.verdict or "UNEVALUATED"),
        evaluation=evaluation.name if evaluation else "",
        gated=gated_comparison(decided, history.primary_metric) if decided else None,
        slices=tuple(
            v
            for v in (decided.metrics if decided else ())
            if v.metric == history.primary_metric and v.slice
        ),
        loss_curve=run.loss_curve if run else (),
        training_cost=checkpoint.cost,
        evaluation_seconds=evaluation_seconds,
        promoted_time=promoted,
        rolled_back_time=rolled_back,
        data_to_production_seconds=(
            (promoted - pushed).total_seconds() if promoted and pushed else None
        ),
        aliases=checkpoint.aliases,
    )


def _run_time(run: TrainingRun) -> datetime | None:
    return run.start_time or run.create_time


def build_scorecard(history: ModelHistory, *, start: datetime, end: datetime) -> Scorecard:
    """The scorecard of ``history`` for checkpoints, runs and moves between start and end."""
    in_window = [c for c in history.checkpoints if _in(c.create_time, start, end)]
    in_window.sort(key=lambda c: (c.create_time is None, c.create_time, c.name))
    scores = tuple(_score(history, c) for c in in_window)

    judgements: list[tuple[datetime, str, bool]] = []
    for checkpoint in history.checkpoints:
        judged = [
            e
            for e in checkpoint.evaluations
            if e.verdict in DECIDED_VERDICTS and _in(e.complete_time, start, end)
        ]
        if latest := latest_decided(judged):
            assert latest.complete_time is not None  # _in() holds only for a set time
            judgements.append(
                (latest.complete_time, checkpoint.name, latest.verdict == "REGRESSED")
            )
    judgements.sort()
    regression_history: list[RegressionRatePoint] = []
    regressed = 0
    for evaluated, (moment, name, was_regressed) in enumerate(judgements, start=1):
        regressed += was_regressed
        rate = wilson_interval(regressed, evaluated)
        assert rate is not None
        regression_history.append(RegressionRatePoint(moment, name, evaluated, regressed, rate))
    evaluated = len(judgements)

    rollbacks = tuple(
        sorted(
            (m for m in history.moves if m.is_rollback and _in(m.move_time, start, end)),
            key=lambda m: (m.move_time, m.revision),
        )
    )
    runs = sorted(
        (r for r in history.runs.values() if _in(_run_time(r), start, end)),
        key=lambda r: (_run_time(r), r.name),
    )
    run_costs = tuple(
        RunCost(
            run=r.name,
            state=r.state,
            time=_run_time(r),
            device_seconds=r.cost.device_seconds,
            amount=r.cost.amount,
            currency=r.cost.currency,
            tokens=r.cost.tokens,
            device_type=r.cost.device_type,
            loss_curve=r.loss_curve,
            estimate=r.estimate,
            estimate_error=estimate_error(r),
            stop_reason=r.stop_reason,
        )
        for r in runs
    )
    cost_errors = [
        abs(r.estimate_error.cost)
        for r in run_costs
        if r.estimate_error is not None and r.estimate_error.cost is not None
    ]
    summary = WindowSummary(
        start=start,
        end=end,
        evaluated=evaluated,
        regressed=regressed,
        regression_rate=wilson_interval(regressed, evaluated),
        rollbacks=len(rollbacks),
        mean_time_to_rollback_seconds=mean_time_to_rollback(rollbacks),
        runs=len(run_costs),
        cost_per_run=linear_trend([r.amount for r in run_costs]),
        mean_absolute_estimate_error=fmean(cost_errors) if cost_errors else None,
    )
    return Scorecard(
        model=history.model,
        primary_metric=history.primary_metric,
        checkpoints=scores,
        runs=run_costs,
        rollbacks=rollbacks,
        window=summary,
        regression_history=tuple(regression_history),
        gaps=history.gaps,
        owner=history.owner,
        budget=history.budget,
    )


def human_duration(seconds: float | None) -> str:
    """``95`` → ``1m35s``; ``None`` → ``—``."""
    if seconds is None:
        return "—"
    rounded = round(seconds)
    if rounded < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{rounded}s"
    span = timedelta(seconds=rounded)
    hours, rest = divmod(span.seconds, 3600)
    minutes, secs = divmod(rest, 60)
    hours += span.days * 24
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def budget_text(budget: Budget) -> str:
    """``USD 5.00 per run, USD 100.00 per month``; ``none`` without limits."""
    limits = [
        f"{budget.currency} {amount:.2f} per {period}"
        for amount, period in ((budget.per_run, "run"), (budget.per_month, "month"))
        if amount is not None
    ]
    return ", ".join(limits) or "none"
