"""Shift between a version and its parent: do the new version's texts come from another
distribution than the parent's?

The label audit's worker embeds the parent's texts and the texts the version *adds* (those
whose normalised input the parent does not have; a seeded subset of each) with the audit's
encoder and runs the classifier two-sample test of :mod:`shared.stats.two_sample` on them: a
linear discriminant trained out of fold to tell the new rows from the parent's, its AUC
calibrated by permutation. The shift is FLAGGED when the effect size ``AUC - 0.5`` reaches
``min_effect`` *and* the p-value is at most ``significance_level``: the effect decides, so a
large version does not flag trivia.

Rows the version keeps from its parent are left out: they are the parent's rows, so they can
only dilute the answer, and worse, a text on both sides is predicted out of fold as the *other*
side, which drives the AUC below 0.5 (seen: -0.10 for a version keeping half its parent's rows
and adding new ones from the same source). A version that only removes or relabels rows adds
nothing to test (SKIPPED; label churn covers relabelling).

The policy is report only: a flagged shift is stored with the audit, exported as a metric and
announced in ``DatasetAudited``, and never changes the audit's verdict. New data that differs
from the old is often the point of a new version (a new source, a new season); whether it is
wanted is a person's call, and the evaluator's own shift check says whether the evaluation set
still represents what the model is trained on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from shared.stats.two_sample import TwoSampleResult

#: Fewest texts on each side for the test to run (its folds need rows of both samples).
MIN_ROWS = 10


class ParentShiftStatus(enum.StrEnum):
    PASSED = "passed"
    FLAGGED = "flagged"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class ParentShiftPolicy:
    """When a shift is flagged, and how much of each version the test embeds."""

    #: ``AUC - 0.5`` from which a shift is flagged. 0.1 (the evaluator's default too): a
    #: standardised mean shift of about 0.36, small-to-medium; at 500 rows a side the AUC's
    #: sampling noise is about 0.02, so a resample of the parent stays well under it.
    min_effect: float = 0.1
    significance_level: float = 0.01
    permutations: int = 200
    #: Rows of each version embedded (a seeded subset beyond it): the embeddings are the cost.
    max_rows: int = 500
    #: False turns the test off (every shift is SKIPPED).
    enabled: bool = True


@dataclass(frozen=True)
class ParentShift:
    """The test's outcome, as stored with the audit and announced."""

    parent_version: str
    status: ParentShiftStatus
    reason: str
    min_effect: float
    significance_level: float
    auc: float = 0.0
    p_value: float = 0.0
    permutations: int = 0
    parent_rows: int = 0
    version_rows: int = 0

    @property
    def effect_size(self) -> float:
        return self.auc - 0.5 if self.status is not ParentShiftStatus.SKIPPED else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "parent_version": self.parent_version,
            "status": self.status.value,
            "reason": self.reason,
            "min_effect": self.min_effect,
            "significance_level": self.significance_level,
            "auc": self.auc,
            "p_value": self.p_value,
            "permutations": self.permutations,
            "parent_rows": self.parent_rows,
            "version_rows": self.version_rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ParentShift:
        return cls(
            parent_version=str(data["parent_version"]),
            status=ParentShiftStatus(data["status"]),
            reason=str(data["reason"]),
            min_effect=float(data["min_effect"]),
            significance_level=float(data["significance_level"]),
            auc=float(data.get("auc", 0.0)),
            p_value=float(data.get("p_value", 0.0)),
            permutations=int(data.get("permutations", 0)),
            parent_rows=int(data.get("parent_rows", 0)),
            version_rows=int(data.get("version_rows", 0)),
        )


def skipped_shift(parent_version: str, policy: ParentShiftPolicy, reason: str) -> ParentShift:
    return ParentShift(
        parent_version,
        ParentShiftStatus.SKIPPED,
        f"parent_shift: {reason}",
        min_effect=policy.min_effect,
        significance_level=policy.significance_level,
    )


def judge_parent_shift(
    parent_version: str, test: TwoSampleResult, policy: ParentShiftPolicy
) -> ParentShift:
    """The shift's status from the two-sample test of the parent's (reference) and the
    version's (sample) embeddings."""
    flagged = test.separates(
        min_effect=policy.min_effect, significance_level=policy.significance_level
    )
    reason = (
        f"parent_shift: a classifier tells the texts this version adds from {parent_version}'s "
        f"with "
        f"AUC {test.auc:.3f} (effect {test.effect_size:+.3f}, flagged from "
        f"{policy.min_effect:g} at p <= {policy.significance_level:g}; permutation p = "
        f"{test.p_value:.3g} over {test.permutations}; {test.sample_rows} added and "
        f"{test.reference_rows} parent rows); report only"
    )
    return ParentShift(
        parent_version,
        ParentShiftStatus.FLAGGED if flagged else ParentShiftStatus.PASSED,
        reason,
        min_effect=policy.min_effect,
        significance_level=policy.significance_level,
        auc=test.auc,
        p_value=test.p_value,
        permutations=test.permutations,
        parent_rows=test.reference_rows,
        version_rows=test.sample_rows,
    )
