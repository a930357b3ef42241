"""Promotion: what a finished evaluation does to a model's aliases (:func:`decide_on_evaluation`).

"At least as good as production" is decided by the evaluator's own rule
(``shared.stats.decision``), on the evaluator's family of gated comparisons, with no tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from services.registry.domain.model import PromotionPolicy, ReviewState, Verdict
from shared.stats.decision import DifferenceOutcome, GatedDifference, judge_differences
from shared.stats.paired import NormalDifference


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
