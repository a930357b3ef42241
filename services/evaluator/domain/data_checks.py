"""What the evaluation set says about itself next to the candidate's training data.

A verdict is only as good as the set it was measured on. Three checks compare the pinned
primary evaluation set with the train part of the split the candidate was trained on (its
lineage), and their results travel with the evaluation and its EvaluationCompleted:

* **Contamination** — evaluation rows with a near-duplicate (or an equal text) among the
  training rows (:func:`shared.near_duplicates.near_duplicates_in` over
  :func:`shared.input_text.near_duplicate_text`: a classification row's text, a causal-LM row's
  prompt and completion). Past ``contamination_max_share`` the set is *contaminated*: the
  candidate may have memorised those rows, so its score on them is no evidence of
  non-inferiority. A contaminated evaluation cannot PASS: a PASSED verdict becomes
  INSUFFICIENT_DATA (and the registry does not promote on it); REGRESSED stands — memorised
  rows can only flatter the candidate, so a regression shown in spite of them is real.
* **Coverage** — per label (classification) and per slice, training rows against evaluation
  rows; labels or slices trained on but never evaluated are listed. Reported, never blocking:
  a narrow set still measures what it covers.
* **Shift** — a classifier two-sample test on embeddings (:mod:`shared.stats.two_sample`):
  flagged when the effect size ``AUC - 0.5`` reaches ``shift_min_effect`` *and* the permutation
  p-value is at most ``shift_significance_level`` (the effect decides, so large sets do not
  flag trivia); also flagged when the share of evaluation rows far from every training row
  exceeds ``far_max_share``. Reported, never blocking: a shifted set may be exactly what the
  model is meant to face; people decide.

A check that cannot run (no lineage split, a set too small) is SKIPPED with its reason, never
a silent pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from services.evaluator.domain.gate import Verdict
from shared.input_text import near_duplicate_text
from shared.near_duplicates import DEFAULT_THRESHOLD, near_duplicates_in
from shared.stats.two_sample import FarShare, TwoSampleResult

#: Contaminated rows quoted by id.
ROWS_QUOTED = 20


class DataCheckStatus(StrEnum):
    PASSED = "PASSED"
    FLAGGED = "FLAGGED"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class DataCheckPolicy:
    """Thresholds of the data checks (the evaluator's settings; see the README for why)."""

    #: Share of contaminated evaluation rows past which the evaluation is contaminated. 1 %:
    #: memorised rows can each turn a miss into a hit, so they may lift a metric by up to their
    #: share; at 1 % that stays below the tolerances gates use (a point or more of accuracy).
    contamination_max_share: float = 0.01
    #: Estimated Jaccard similarity of character shingles from which two texts are
    #: near-duplicates (the dataset gate's and the splitter's default).
    similarity_threshold: float = DEFAULT_THRESHOLD
    #: ``AUC - 0.5`` from which a shift is flagged (0.1: a standardised mean shift of about
    #: 0.36, small-to-medium; sampling noise at 1,000 rows per side is about 0.013).
    shift_min_effect: float = 0.1
    shift_significance_level: float = 0.01
    shift_permutations: int = 200
    #: Rows of each side embedded for the shift test (a seeded subset beyond it).
    shift_max_rows: int = 1000
    #: The quantile of training rows' own nearest-neighbour distances beyond which a row is far.
    far_quantile: float = 0.99
    #: Share of far evaluation rows past which a shift is flagged (five times the 1 % expected).
    far_max_share: float = 0.05
    #: False turns the shift check off (it needs the worker to embed texts).
    shift_enabled: bool = True


@dataclass(frozen=True)
class Contamination:
    status: DataCheckStatus
    reason: str
    evaluation_rows: int = 0
    training_rows: int = 0
    contaminated_rows: int = 0
    max_share: float = 0.0
    similarity_threshold: float = 0.0
    #: Ids of the first contaminated evaluation rows, in set order.
    row_ids: tuple[str, ...] = ()

    @property
    def share(self) -> float:
        return self.contaminated_rows / self.evaluation_rows if self.evaluation_rows else 0.0


@dataclass(frozen=True)
class CoverageCount:
    value: str
    training_rows: int
    evaluation_rows: int


@dataclass(frozen=True)
class Coverage:
    status: DataCheckStatus
    reason: str
    labels: tuple[CoverageCount, ...] = ()
    slices: tuple[CoverageCount, ...] = ()

    @property
    def untested_labels(self) -> tuple[str, ...]:
        return tuple(c.value for c in self.labels if c.training_rows and not c.evaluation_rows)

    @property
    def untested_slices(self) -> tuple[str, ...]:
        return tuple(c.value for c in self.slices if c.training_rows and not c.evaluation_rows)


@dataclass(frozen=True)
class Shift:
    status: DataCheckStatus
    reason: str
    auc: float = 0.0
    p_value: float = 0.0
    permutations: int = 0
    min_effect: float = 0.0
    significance_level: float = 0.0
    far_share: float = 0.0
    far_distance: float = 0.0
    far_quantile: float = 0.0
    far_max_share: float = 0.0
    training_rows: int = 0
    evaluation_rows: int = 0

    @property
    def effect_size(self) -> float:
        return self.auc - 0.5 if self.status is not DataCheckStatus.SKIPPED else 0.0


@dataclass(frozen=True)
class DataChecks:
    """The three checks of one evaluation, and what they did to its verdict."""

    #: The split whose train part was compared (from the candidate's lineage); "" if none.
    training_split: str
    contamination: Contamination
    coverage: Coverage
    shift: Shift
    #: Why the verdict was changed (PASSED withheld for contamination); "" when it was not.
    verdict_effect: str = ""

    def applied_to(self, verdict: Verdict) -> tuple[Verdict, DataChecks]:
        """The verdict the gate reports given these checks (see the module doc)."""
        contaminated = self.contamination.status is DataCheckStatus.FLAGGED
        if verdict is Verdict.PASSED and contaminated:
            effect = (
                "PASSED withheld: the evaluation set is contaminated "
                f"({self.contamination.reason}); a score on rows the candidate may have "
                "memorised cannot show non-inferiority"
            )
            return Verdict.INSUFFICIENT_DATA, replace(self, verdict_effect=effect)
        return verdict, self


def skipped(training_split: str, reason: str) -> DataChecks:
    """Every check skipped for one ``reason`` (no training data to compare with)."""
    return DataChecks(
        training_split,
        Contamination(DataCheckStatus.SKIPPED, reason),
        Coverage(DataCheckStatus.SKIPPED, reason),
        Shift(DataCheckStatus.SKIPPED, reason),
    )


def comparison_texts(rows: Iterable[Mapping[str, object]]) -> list[str]:
    """Each row's near-duplicate text ("" for a row without one, which matches nothing)."""
    return [near_duplicate_text(row) or "" for row in rows]


def check_contamination(
    evaluation_rows: Sequence[Mapping[str, object]],
    training_rows: Sequence[Mapping[str, object]],
    policy: DataCheckPolicy,
) -> Contamination:
    """Evaluation rows with near-duplicates among the training rows, judged by the policy."""
    if not evaluation_rows or not training_rows:
        return Contamination(DataCheckStatus.SKIPPED, "no evaluation rows or no training rows")
    found = near_duplicates_in(
        comparison_texts(evaluation_rows),
        [text for text in comparison_texts(training_rows) if text],  # "" matches nothing
        threshold=policy.similarity_threshold,
    )
    count = len(found)
    share = count / len(evaluation_rows)
    contaminated = share > policy.contamination_max_share
    reason = (
        f"{count} of {len(evaluation_rows)} evaluation rows ({share:.1%}) have a near-duplicate "
        f"among {len(training_rows)} training rows (similarity >= "
        f"{policy.similarity_threshold:g}); the limit is {policy.contamination_max_share:.1%}"
    )
    return Contamination(
        DataCheckStatus.FLAGGED if contaminated else DataCheckStatus.PASSED,
        reason,
        evaluation_rows=len(evaluation_rows),
        training_rows=len(training_rows),
        contaminated_rows=count,
        max_share=policy.contamination_max_share,
        similarity_threshold=policy.similarity_threshold,
        row_ids=tuple(str(evaluation_rows[i].get("id", "")) for i in list(found)[:ROWS_QUOTED]),
    )


def _counts(
    values: Iterable[str], evaluated: Iterable[str], *, keep_empty: bool
) -> tuple[CoverageCount, ...]:
    trained, tested = Counter(values), Counter(evaluated)
    return tuple(
        CoverageCount(value, trained[value], tested[value])
        for value in sorted(set(trained) | set(tested))
        if keep_empty or value
    )


def check_coverage(
    evaluation_rows: Sequence[Mapping[str, object]],
    training_rows: Sequence[Mapping[str, object]],
    slice_of: Callable[[Mapping[str, object]], str],
) -> Coverage:
    """Per label and per slice counts; FLAGGED when a trained label or slice is never tested.
    ``slice_of`` names a row's slice ("" for none; not counted as a slice)."""
    if not evaluation_rows or not training_rows:
        return Coverage(DataCheckStatus.SKIPPED, "no evaluation rows or no training rows")
    labels = _counts(
        (str(r["label"]) for r in training_rows if isinstance(r.get("label"), str)),
        (str(r["label"]) for r in evaluation_rows if isinstance(r.get("label"), str)),
        keep_empty=True,
    )
    slices = _counts(
        (slice_of(r) for r in training_rows),
        (slice_of(r) for r in evaluation_rows),
        keep_empty=False,
    )
    coverage = Coverage(DataCheckStatus.PASSED, "", labels, slices)
    missing = [
        f"{what} {', '.join(map(repr, values))}"
        for what, values in (
            ("labels", coverage.untested_labels),
            ("slices", coverage.untested_slices),
        )
        if values
    ]
    if missing:
        return replace(
            coverage,
            status=DataCheckStatus.FLAGGED,
            reason=f"trained on but never evaluated: {'; '.join(missing)}",
        )
    return replace(
        coverage,
        reason=f"every trained label ({len(labels)}) and slice ({len(slices)}) is evaluated",
    )


def judge_shift(test: TwoSampleResult, far: FarShare, policy: DataCheckPolicy) -> Shift:
    """The shift check's verdict from its two measurements (see the module doc)."""
    separable = test.separates(
        min_effect=policy.shift_min_effect, significance_level=policy.shift_significance_level
    )
    too_far = far.share > policy.far_max_share
    reason = (
        f"a classifier tells evaluation from training rows with AUC {test.auc:.3f} (effect "
        f"{test.effect_size:+.3f}, flagged from {policy.shift_min_effect:g}; permutation p = "
        f"{test.p_value:.3g} over {test.permutations}); {far.share:.1%} of evaluation rows are "
        f"farther from every training row than {far.quantile:.0%} of training rows are "
        f"(flagged above {policy.far_max_share:.0%})"
    )
    return Shift(
        DataCheckStatus.FLAGGED if separable or too_far else DataCheckStatus.PASSED,
        reason,
        auc=test.auc,
        p_value=test.p_value,
        permutations=test.permutations,
        min_effect=policy.shift_min_effect,
        significance_level=policy.shift_significance_level,
        far_share=far.share,
        far_distance=far.distance,
        far_quantile=far.quantile,
        far_max_share=policy.far_max_share,
        training_rows=test.reference_rows,
        evaluation_rows=test.sample_rows,
    )
