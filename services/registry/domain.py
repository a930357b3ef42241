"""The registry service's domain: plain dataclasses and rules, no grpc, kafka, torch or SQL.

The rules that matter most live here, each a pure function a unit test can drive directly:

* names: ``models/{m}``, ``models/{m}/checkpoints/{c}``, ``models/{m}/aliases/{a}``, and how a
  trainer checkpoint name becomes a registry checkpoint id;
* promotion: what a finished evaluation does to a model's aliases (:func:`decide_on_evaluation`);
* rollback: which checkpoint production goes back to (:func:`choose_rollback_target`), replaying
  the alias history as a stack of production "stints";
* alerts: reading Alertmanager's webhook payload (:func:`parse_alertmanager_payload`) and
  deciding whether a firing alert is about the checkpoint in production now
  (:func:`alert_concerns_production`);
* live quality: whether a checkpoint is past the model's floor, from a bare value or from
  counts through an always-valid confidence sequence (:func:`judge_live_quality`);
* four eyes: whether a reviewer is one of a checkpoint's authors (:func:`four_eyes_conflict`).

"At least as good as production" is decided by the evaluator's own rule
(``shared.stats.decision``), on the evaluator's family of gated comparisons, with no tolerance.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from shared import names
from shared.errors import (
    FailedPrecondition,
    PreconditionViolation,
)
from shared.stats.decision import DifferenceOutcome, GatedDifference, judge_differences
from shared.stats.paired import NormalDifference
from shared.stats.sequential import DEFAULT_PRIOR, bernoulli_confidence_sequence

PRODUCTION = "production"
CANDIDATE = "candidate"
#: The alias id of ``ListAliasHistory`` that means "every alias of the model".
ALL_ALIASES = "-"

#: The actor recorded for moves the registry makes on its own (events).
SERVICE_ACTOR = "tuneline-registry"
#: The actor recorded for rollbacks caused by an Alertmanager webhook.
ALERTMANAGER_ACTOR = "alertmanager"


class PromotionPolicy(StrEnum):
    """How a model's checkpoints reach production."""

    AUTOMATIC = "AUTOMATIC"
    MANUAL = "MANUAL"


class MoveTrigger(StrEnum):
    """What moved an alias."""

    PROMOTION = "PROMOTION"
    APPROVAL = "APPROVAL"
    ROLLBACK_REGRESSION = "ROLLBACK_REGRESSION"
    ROLLBACK_ALERT = "ROLLBACK_ALERT"
    ROLLBACK_MANUAL = "ROLLBACK_MANUAL"
    MANUAL = "MANUAL"

    @property
    def is_rollback(self) -> bool:
        return self in _ROLLBACKS

    @property
    def marks_rolled_back(self) -> bool:
        """A rollback for a regression or an alert brands the checkpoint it leaves as bad."""
        return self in (MoveTrigger.ROLLBACK_REGRESSION, MoveTrigger.ROLLBACK_ALERT)

    @property
    def metric_label(self) -> str:
        """Short lower-case label for Prometheus (``regression``, ``alert``, ``manual`` …)."""
        return self.value.removeprefix("ROLLBACK_").lower()


_ROLLBACKS = frozenset(
    {MoveTrigger.ROLLBACK_REGRESSION, MoveTrigger.ROLLBACK_ALERT, MoveTrigger.ROLLBACK_MANUAL}
)


class ReviewState(StrEnum):
    """Where a checkpoint stands in manual review."""

    NOT_REQUIRED = "NOT_REQUIRED"
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class Verdict(StrEnum):
    """An evaluation's verdict (UNSPECIFIED: none yet)."""

    UNSPECIFIED = "UNSPECIFIED"
    PASSED = "PASSED"
    REGRESSED = "REGRESSED"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"
    FAILED = "FAILED"


# -- names ------------------------------------------------------------------------------------


# Names follow shared.names (MODEL, MODEL_CHECKPOINT, MODEL_ALIAS); these three have many
# callers, so they stay as the registry's short spellings of it.


def model_name(model_id: str) -> str:
    return names.MODEL.format(model=model_id)


def checkpoint_name(model_id: str, checkpoint_id: str) -> str:
    return names.MODEL_CHECKPOINT.format(model=model_id, checkpoint=checkpoint_id)


def alias_name(model_id: str, alias_id: str) -> str:
    return names.MODEL_ALIAS.format(model=model_id, alias=alias_id)


def parse_model_name(name: str, *, field: str = "name") -> str:
    """``models/{m}`` → ``m``; INVALID_ARGUMENT naming ``field`` otherwise."""
    return names.MODEL.parse(name, field=field)["model"]


def parse_checkpoint_name(name: str, *, field: str = "name") -> tuple[str, str]:
    """``models/{m}/checkpoints/{c}`` → ``(m, c)``."""
    model, checkpoint = names.MODEL_CHECKPOINT.ids(name, field=field)
    return model, checkpoint


def parse_alias_name(name: str, *, field: str = "name", allow_all: bool = False) -> tuple[str, str]:
    """``models/{m}/aliases/{a}`` → ``(m, a)``; ``a`` may be ``-`` when ``allow_all``."""
    pattern = names.ANY_MODEL_ALIAS if allow_all else names.MODEL_ALIAS
    model, alias = pattern.ids(name, field=field)
    return model, alias


def registry_checkpoint_id(source_checkpoint: str) -> str:
    """The registry's id for a trainer checkpoint: ``{job}.{checkpoint}``.

    Job and checkpoint ids never contain a dot (``^[a-z]([a-z0-9-]…)``), so the id is
    unambiguous and a person can still read which job and step it came from.
    """
    if not names.TRAINER_CHECKPOINT.matches(source_checkpoint):
        raise ValueError(f"{source_checkpoint!r} is not {names.TRAINER_CHECKPOINT.template}")
    return ".".join(names.TRAINER_CHECKPOINT.ids(source_checkpoint))


# -- metrics and gates ------------------------------------------------------------------------


def higher_is_better(metric: str) -> bool:
    """Every metric is a fraction where higher is better, except losses."""
    return not (metric == "loss" or metric.endswith("_loss"))


def is_past_floor(metric: str, value: float, floor: float | None) -> bool:
    """True when ``value`` is worse than the model's floor (a ceiling, for a loss)."""
    if floor is None:
        return False
    return value < floor if higher_is_better(metric) else value > floor


#: Each bound of a live quality confidence sequence is wrong with probability at most this,
#: over a checkpoint's whole time in production: the false-rollback rate of a checkpoint that
#: is at or above its floor (the default of ``TUNELINE_REGISTRY_LIVE_QUALITY_ALPHA``).
LIVE_QUALITY_ALPHA = 0.01
#: Labelled outcomes a checkpoint needs before counted live quality can find it below its
#: floor: no rollback on the first handful of feedback, however bad (the default of
#: ``TUNELINE_REGISTRY_LIVE_QUALITY_MIN_TRIALS``).
LIVE_QUALITY_MIN_TRIALS = 100
#: Weight, in outcomes, of the confidence sequence's prior, centred on the floor: the sequence
#: is tightest where the decision is made (any prior fixed before the data keeps it valid;
#: the default of ``TUNELINE_REGISTRY_LIVE_QUALITY_PRIOR_WEIGHT``).
LIVE_QUALITY_PRIOR_WEIGHT = 20.0


@dataclass(frozen=True)
class LiveQualityRule:
    """How counted live quality is judged: the error rate of the confidence sequence, the
    outcomes needed before any verdict, and the weight of its prior (a service setting)."""

    alpha: float = LIVE_QUALITY_ALPHA
    min_trials: int = LIVE_QUALITY_MIN_TRIALS
    prior_weight: float = LIVE_QUALITY_PRIOR_WEIGHT

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"live quality alpha must be in (0, 1), not {self.alpha}")
        if self.min_trials < 1:
            raise ValueError(f"live quality min_trials must be >= 1, not {self.min_trials}")
        if not self.prior_weight > 0:
            raise ValueError(f"live quality prior_weight must be > 0, not {self.prior_weight}")


@dataclass(frozen=True)
class RollbackBreaker:
    """The per-model circuit breaker of automatic rollbacks (a service setting).

    At most ``limit`` rollbacks by alert or regression within ``window``; the next automatic one
    is refused and freezes the model's automation until a person unfreezes it. Something that
    keeps rolling production back is more likely broken itself (a flapping alert, a bad floor)
    than right every time, and each step walks production further into the past.
    """

    limit: int = 1
    window: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"the rollback breaker's limit must be >= 1, not {self.limit}")
        if self.window <= timedelta(0):
            raise ValueError(f"the rollback breaker's window must be positive, not {self.window}")

    def window_start(self, now: datetime) -> datetime:
        return now - self.window

    def trips(self, automatic_rollbacks_in_window: int) -> bool:
        """Whether one more automatic rollback would exceed the limit."""
        return automatic_rollbacks_in_window >= self.limit

    def reason(self, automatic_rollbacks_in_window: int) -> str:
        return (
            f"{automatic_rollbacks_in_window} automatic rollback(s) within "
            f"{self.window.total_seconds():.0f} s (limit {self.limit}): automation frozen "
            "until a person unfreezes it"
        )


@dataclass(frozen=True)
class LiveQuality:
    """A production checkpoint's counted live quality so far, and what it says."""

    successes: int
    trials: int
    lower_bound: float
    upper_bound: float
    below_floor: bool
    #: Of the bounds: 1 - the rule's alpha.
    confidence_level: float = 1 - LIVE_QUALITY_ALPHA

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else math.nan


def judge_live_quality(
    successes: int, trials: int, floor: float | None, rule: LiveQualityRule | None = None
) -> LiveQuality:
    """Counted live quality of a success rate (higher is better) against the model's floor.

    Below the floor once there are at least ``rule.min_trials`` outcomes and the upper bound
    of the always-valid confidence sequence is below it: a checkpoint whose true rate is at or
    above the floor is rolled back with probability at most ``rule.alpha``, however often
    reports arrive.
    """
    rule = rule or LiveQualityRule()
    prior = DEFAULT_PRIOR
    if floor is not None:
        centre = min(max(floor, 0.01), 0.99)
        prior = (centre * rule.prior_weight, (1 - centre) * rule.prior_weight)
    bounds = bernoulli_confidence_sequence(successes, trials, rule.alpha, prior)
    below = floor is not None and trials >= rule.min_trials and bounds.upper < floor
    return LiveQuality(successes, trials, bounds.lower, bounds.upper, below, 1 - rule.alpha)


@dataclass(frozen=True)
class Comparison:
    """A candidate-versus-baseline comparison as the registry judges it."""

    metric: str
    slice: str
    evaluation_set: str
    delta: float
    ci_lower: float
    ci_upper: float
    higher_is_better: bool
    gated: bool
    #: Standard error of ``delta`` under "no difference", as the evaluator measured it.
    standard_error: float = 0.0
    #: The comparison's share of alpha in the evaluator's family; 0 when it is not in it (and
    #: for every comparison of an evaluation made before the family existed).
    family_weight: float = 0.0
    #: Of the interval: 1 - 2 alpha since the family exists (1 - alpha before).
    confidence_level: float = 0.95

    @property
    def interval_shows_drop(self) -> bool:
        """The candidate is worse and the interval of the difference excludes zero (the rule
        for evaluations made before the evaluator reported its family)."""
        if self.higher_is_better:
            return self.delta < 0 and self.ci_upper < 0
        return self.delta > 0 and self.ci_lower > 0

    def describe(self) -> str:
        where = f" in slice {self.slice!r}" if self.slice else ""
        return f"{self.metric}{where} changed by {self.delta:+.4f}"


def significant_drops(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The gated comparisons that show the candidate worse than its baseline at all.

    The gate's rule with a tolerance of zero, on the gate's own family (the same members, the
    same weights, the same alpha, Holm across them), so the registry never finds a "drop" the
    gate's statistics would not, nor more of them because there are many slices.
    """
    family = [
        c
        for c in comparisons
        if c.family_weight > 0 and math.isfinite(c.delta) and c.standard_error >= 0
    ]
    if not family:
        return [c for c in comparisons if c.gated and c.interval_shows_drop]
    alpha = (1 - family[0].confidence_level) / 2
    judgements = judge_differences(
        [
            GatedDifference(
                NormalDifference(c.delta, c.standard_error),
                tolerance=0.0,
                higher_is_better=c.higher_is_better,
                weight=c.family_weight,
            )
            for c in family
        ],
        alpha,
    )
    return [
        c
        for c, judgement in zip(family, judgements, strict=True)
        if judgement.outcome is DifferenceOutcome.REGRESSED
    ]


class Decision(StrEnum):
    """What an evaluation does to the model's aliases."""

    PROMOTE = "PROMOTE"  # move production now
    AWAIT_REVIEW = "AWAIT_REVIEW"  # move candidate, review PENDING
    HOLD = "HOLD"  # passed, but may not be promoted automatically (see the reason)
    NONE = "NONE"  # not a promotable verdict, or already in production


@dataclass(frozen=True)
class EvaluationOutcome:
    """The decision and, for people, why."""

    decision: Decision
    reason: str


@dataclass(frozen=True)
class EvaluationFacts:
    """What :func:`decide_on_evaluation` needs to know about one finished evaluation."""

    policy: PromotionPolicy
    verdict: Verdict
    comparisons: Sequence[Comparison]
    #: The checkpoint the evaluation compared with (registry name), "" for the base model.
    baseline_checkpoint: str
    #: The checkpoint in production now (registry name), "" when none.
    production_checkpoint: str
    candidate_checkpoint: str
    candidate_rolled_back: bool
    candidate_review: ReviewState
    #: False when a later evaluation of the same checkpoint was attached already.
    is_latest_evaluation: bool = True
    #: The trainer wrote the candidate as its job was cancelled or failed: partly trained.
    candidate_training_interrupted: bool = False
    #: Why the evaluation's parity check FAILED ("" when it did not): what was evaluated is
    #: not what would serve, so it is never promoted, automatically or by hand.
    parity_failure: str = ""
    #: The candidate's and production's training jobs and validation losses (``None``: never
    #: validated), for the one-checkpoint-per-job rule.
    candidate_job: CheckpointOfJob | None = None
    production_job: CheckpointOfJob | None = None


@dataclass(frozen=True)
class CheckpointOfJob:
    """Where a checkpoint stands in its training job: the job, and its validation loss."""

    training_job: str
    validation_loss: float | None


def better_checkpoint_of_same_job(
    candidate: CheckpointOfJob | None, production: CheckpointOfJob | None
) -> bool:
    """True when production is a checkpoint of the candidate's own training job with a
    validation loss at most the candidate's: the job's result is already in production, and a
    later-passing, worse checkpoint of the same run must not replace it."""
    if candidate is None or production is None or not candidate.training_job:
        return False
    if candidate.training_job != production.training_job:
        return False
    if candidate.validation_loss is None or production.validation_loss is None:
        return False
    return production.validation_loss <= candidate.validation_loss


def decide_on_evaluation(facts: EvaluationFacts) -> EvaluationOutcome:  # noqa: PLR0911
    """What a finished evaluation does (see ``PromotionPolicy`` in the registry's contract).

    * Only the latest evaluation of a checkpoint counts, and only a PASSED one can move anything.
    * AUTOMATIC promotes only when the candidate is at least as good as production: the
      evaluation must have compared it with the checkpoint in production *now* (a baseline that
      production has since moved away from proves nothing), and no gated comparison may show a
      significant drop of any size, even one the gate tolerated.
    * A checkpoint once rolled back for a regression or an alert is never promoted again
      automatically; a person can still promote it explicitly.
    * Nor is a checkpoint whose training was cancelled or failed (a partly trained adapter,
      however well it scores): passing an evaluation does not make it the job's result.
    * One result per training job: when several checkpoints of a job pass (selection ALL or
      BEST_AND_FINAL), the one with the lowest validation loss wins, whatever order the
      verdicts arrive in — a checkpoint is held when production is a checkpoint of its own job
      with a validation loss no higher than its own.
    * MANUAL moves ``candidate`` and waits for a reviewer.
    * A FAILED parity check (merged vs unmerged, serving profile, tokenizer fingerprint) blocks
      every promotion: what was evaluated is not what would serve.
    """
    if not facts.is_latest_evaluation:
        return EvaluationOutcome(Decision.NONE, "a later evaluation of this checkpoint exists")
    if facts.verdict is not Verdict.PASSED:
        return EvaluationOutcome(Decision.NONE, f"verdict {facts.verdict.value}")
    if facts.parity_failure:
        return EvaluationOutcome(Decision.NONE, facts.parity_failure)
    if facts.candidate_checkpoint == facts.production_checkpoint:
        return EvaluationOutcome(Decision.NONE, "already in production")
    if facts.policy is PromotionPolicy.MANUAL:
        if facts.candidate_review in (ReviewState.APPROVED, ReviewState.REJECTED):
            return EvaluationOutcome(
                Decision.NONE, f"already reviewed ({facts.candidate_review.value})"
            )
        return EvaluationOutcome(Decision.AWAIT_REVIEW, "evaluation passed; awaiting review")
    if facts.candidate_training_interrupted:
        return EvaluationOutcome(
            Decision.HOLD,
            "its training job was cancelled or failed, so it is partly trained; "
            "promote it explicitly if it is good",
        )
    if facts.candidate_rolled_back:
        return EvaluationOutcome(
            Decision.HOLD, "it was rolled back before; promote it explicitly if it is good now"
        )
    if better_checkpoint_of_same_job(facts.candidate_job, facts.production_job):
        assert facts.candidate_job is not None
        assert facts.production_job is not None
        return EvaluationOutcome(
            Decision.HOLD,
            f"production is already {facts.production_checkpoint}, a checkpoint of the same "
            f"job with a validation loss of {facts.production_job.validation_loss:.4g} "
            f"(this one: {facts.candidate_job.validation_loss:.4g}); only the best checkpoint "
            "of a job by validation loss is promoted automatically",
        )
    if facts.baseline_checkpoint != facts.production_checkpoint:
        baseline = facts.baseline_checkpoint or "the base model"
        production = facts.production_checkpoint or "nothing"
        return EvaluationOutcome(
            Decision.HOLD,
            f"compared with {baseline}, but production is now {production}; "
            "re-evaluate against production",
        )
    drops = significant_drops(facts.comparisons)
    if drops:
        return EvaluationOutcome(
            Decision.HOLD,
            "not at least as good as production: "
            + "; ".join(d.describe() for d in drops[:3])
            + (f" (+{len(drops) - 3} more)" if len(drops) > 3 else ""),
        )
    return EvaluationOutcome(Decision.PROMOTE, "evaluation passed and no gated metric dropped")


# -- four eyes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FourEyesConflict:
    """Why a reviewer may not approve (or promote to production) a checkpoint: they made it."""

    #: What they created: ``training_job`` (the job that produced the checkpoint) or ``model``.
    created: str
    #: The creator's identity, as verified when they created it.
    creator: str


def four_eyes_conflict(
    reviewer: str, *, job_creator: str, model_creator: str
) -> FourEyesConflict | None:
    """The conflict when ``reviewer`` created the checkpoint's training job or its model.

    The job's creator ran the training that produced the checkpoint, so approving it is
    reviewing their own work. The model's creator is held too: they set the model's gates and
    review policy, and for a job a training policy made (creator ``trainingPolicies/{p}``,
    automation) they are the person nearest to the run. An empty creator (created without
    auth) binds no one, and neither does an empty reviewer.
    """
    if not reviewer:
        return None
    if job_creator and reviewer == job_creator:
        return FourEyesConflict("training_job", job_creator)
    if model_creator and reviewer == model_creator:
        return FourEyesConflict("model", model_creator)
    return None


# -- rollback ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductionMove:
    """One move of a model's ``production`` alias, oldest first in a history."""

    revision: int
    from_checkpoint: str
    to_checkpoint: str
    trigger: MoveTrigger


def production_stack(moves: Iterable[ProductionMove]) -> list[str]:
    """Replay production's history as a stack of stints; the top is production now.

    A promotion pushes its checkpoint. A rollback pops the checkpoint it leaves, then unwinds
    to the restored checkpoint's latest stint (or pushes it, when an explicit target was not on
    the stack). So after A → B → C, rolling back twice gives B then A, and a rollback never
    "returns" to a checkpoint that was itself rolled away from.
    """
    stack: list[str] = []
    for move in sorted(moves, key=lambda m: m.revision):
        if move.trigger.is_rollback:
            if stack:
                stack.pop()
            if move.to_checkpoint in stack:
                last = len(stack) - 1 - stack[::-1].index(move.to_checkpoint)
                del stack[last + 1 :]
            else:
                stack.append(move.to_checkpoint)
        else:
            stack.append(move.to_checkpoint)
    return stack


NO_ROLLBACK_TARGET = "NO_ROLLBACK_TARGET"
INVALID_ROLLBACK_TARGET = "INVALID_ROLLBACK_TARGET"


def choose_rollback_target(
    moves: Sequence[ProductionMove],
    *,
    model: str,
    rolled_back: Iterable[str],
    ever_production: Iterable[str] = (),
    explicit_target: str = "",
) -> str:
    """The checkpoint production rolls back to, or FAILED_PRECONDITION (nothing changes).

    Default: the newest earlier stint below the current one whose checkpoint is neither the
    current checkpoint nor one that was rolled back for a regression or an alert. An explicit
    target must have been production before, must not be the current checkpoint and must not
    have been rolled back itself.
    """
    stack = production_stack(moves)
    if not stack:
        raise FailedPrecondition(
            f"{model} has nothing in production to roll back",
            [PreconditionViolation(NO_ROLLBACK_TARGET, model, "production was never set")],
        )
    current = stack[-1]
    bad = set(rolled_back)
    if explicit_target:
        problem = ""
        if explicit_target == current:
            problem = "it is production now"
        elif explicit_target not in set(ever_production):
            problem = "it was never production"
        elif explicit_target in bad:
            problem = "it was rolled back for a regression or an alert"
        if problem:
            raise FailedPrecondition(
                f"cannot roll {model} back to {explicit_target}: {problem}",
                [PreconditionViolation(INVALID_ROLLBACK_TARGET, explicit_target, problem)],
            )
        return explicit_target
    for checkpoint in reversed(stack[:-1]):
        if checkpoint != current and checkpoint not in bad:
            return checkpoint
    raise FailedPrecondition(
        f"{model} has no earlier good checkpoint to roll back to from {current}",
        [
            PreconditionViolation(
                NO_ROLLBACK_TARGET,
                model,
                f"no checkpoint was production before {current} without being rolled back itself",
            )
        ],
    )


# -- alerts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertNotice:
    """One alert of an Alertmanager webhook notification, as the registry reads it."""

    fingerprint: str
    status: str  # "firing" or "resolved"
    starts_at: datetime
    model_id: str  # "" when the alert names no model
    checkpoint_id: str  # "" when the alert names no checkpoint
    summary: str
    alertname: str
    action: str = ""  # the alert's `action` label: only "rollback" may roll back

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    @property
    def idempotency_key(self) -> str:
        """One incident: the same alert (fingerprint) that started at the same instant."""
        return f"alert:{self.fingerprint}:{self.starts_at.isoformat()}"

    @property
    def cause(self) -> str:
        return f"alert:{self.fingerprint}"

    @property
    def reason(self) -> str:
        return self.summary or f"alert {self.alertname or self.fingerprint} is firing"


def parse_rfc3339(value: str) -> datetime:
    """Alertmanager's timestamps (Go's RFC 3339, up to nanoseconds) as aware datetimes."""
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if not match:
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    fraction = (match.group(2) or "")[:7]  # Python parses at most microseconds
    parsed = datetime.fromisoformat(match.group(1) + fraction + match.group(3))
    if parsed.tzinfo is None:
        raise ValueError(f"RFC 3339 time without an offset: {value!r}")
    return parsed.astimezone(UTC)


def _id_from_label(value: str, prefix: str) -> str:
    """Labels may carry the bare id or the full resource name; keep the last segment."""
    value = value.strip()
    if value.startswith(prefix):
        value = value.rsplit("/", 1)[-1]
    return value


def parse_alertmanager_payload(document: Any) -> list[AlertNotice]:
    """Read Alertmanager's webhook JSON (version 4) into notices; ValueError when malformed."""
    if not isinstance(document, Mapping):
        raise ValueError("the body must be a JSON object")
    version = str(document.get("version", "4"))
    if version != "4":
        raise ValueError(f"unsupported webhook payload version {version!r} (expected 4)")
    alerts = document.get("alerts")
    if not isinstance(alerts, list):
        raise ValueError("'alerts' must be a list")
    common_labels = document.get("commonLabels") or {}
    notices = []
    for index, alert in enumerate(alerts):
        if not isinstance(alert, Mapping):
            raise ValueError(f"alerts[{index}] must be an object")
        labels = {**common_labels, **(alert.get("labels") or {})}
        annotations = alert.get("annotations") or {}
        fingerprint = str(alert.get("fingerprint") or "")
        if not fingerprint:
            raise ValueError(f"alerts[{index}] has no fingerprint")
        status = str(alert.get("status") or document.get("status") or "")
        if status not in ("firing", "resolved"):
            raise ValueError(f"alerts[{index}].status must be firing or resolved")
        try:
            starts_at = parse_rfc3339(str(alert.get("startsAt") or ""))
        except ValueError as error:
            raise ValueError(f"alerts[{index}].startsAt: {error}") from None
        notices.append(
            AlertNotice(
                fingerprint=fingerprint,
                status=status,
                starts_at=starts_at,
                model_id=_id_from_label(str(labels.get("model") or ""), "models/"),
                checkpoint_id=_id_from_label(str(labels.get("checkpoint") or ""), "models/"),
                summary=str(annotations.get("summary") or ""),
                alertname=str(labels.get("alertname") or ""),
                action=str(labels.get("action") or ""),
            )
        )
    return notices


#: The alerts of ``deploy/prometheus/rules`` labelled ``action="rollback"``: the default of
#: TUNELINE_REGISTRY_ROLLBACK_ALERT_NAMES (a test keeps the two in step).
DEFAULT_ROLLBACK_ALERTS = (
    "TunelineModelLiveQualityBelowFloor",
    "TunelineModelLiveQualityValueBelowFloor",
    "TunelineModelOfflineQualityBelowFloor",
)
ROLLBACK_ACTION = "rollback"


@dataclass(frozen=True)
class RollbackAlertPolicy:
    """Which alerts may roll a model back: labelled ``action="rollback"`` and named on the
    allow-list. Any other alert reaching the webhook (a routing mistake, a label a rule author
    copied, a forged notification with the token) is acknowledged and ignored."""

    alertnames: frozenset[str] = frozenset(DEFAULT_ROLLBACK_ALERTS)

    def why_ignored(self, notice: AlertNotice) -> str:
        """Why ``notice`` may not roll anything back, or "" when it may."""
        if notice.action != ROLLBACK_ACTION:
            return f'the alert is not labelled action="{ROLLBACK_ACTION}"'
        if notice.alertname not in self.alertnames:
            return f"alert {notice.alertname!r} is not on the rollback allow-list"
        return ""


def alert_concerns_production(
    notice: AlertNotice, *, production_checkpoint_id: str, production_since: datetime | None
) -> tuple[bool, str]:
    """Whether a firing alert is about the checkpoint in production now, and if not, why.

    An alert that names a checkpoint is about that checkpoint. One that names none is about
    whatever served traffic when it started: if production moved after the alert started (for
    instance, another trigger already rolled back), the alert describes the previous checkpoint
    and must not roll back the one that replaced it.
    """
    if not production_checkpoint_id:
        return False, "nothing is in production"
    if notice.checkpoint_id and notice.checkpoint_id != production_checkpoint_id:
        return False, f"the alert is about {notice.checkpoint_id}, not production"
    if (
        not notice.checkpoint_id
        and production_since is not None
        and notice.starts_at < production_since
    ):
        return False, "the alert started before the current production checkpoint went live"
    return True, ""
