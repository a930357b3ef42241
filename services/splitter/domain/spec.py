"""How to split: the strategy, the part ratios and the seed, with their validation.

A :class:`SplitSpec` is always *resolved* here: defaults are filled in by whoever converts a
request (``entrypoints``), so the domain never guesses. Validation returns precise field
violations under a caller-given prefix (``spec.`` for CreateSplit, ``split_policy.spec.`` for
SetSplitPolicy), because the same spec arrives through different request shapes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any

from shared.errors import FieldViolation, InvalidArgument


class SplitStrategy(StrEnum):
    """How rows are assigned to parts; both strategies are group-aware."""

    #: A group's part depends only on a seeded hash of its key: append-stable.
    HASH = "HASH"
    #: Exact per-label ratios (at group granularity), seeded. Not append-stable.
    STRATIFIED = "STRATIFIED"


class Part(StrEnum):
    """A part of a split; the value is the key used in the manifest."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


#: Every part, in the order manifests, stats and events list them.
PARTS: tuple[Part, ...] = (Part.TRAIN, Part.VALIDATION, Part.TEST)

#: How far from 1 the ratios' sum may be (float input such as 0.7 + 0.2 + 0.1).
RATIO_SUM_TOLERANCE = 1e-6

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class SplitRatios:
    """Fractions of rows per part; ``test`` 0 means there is no test part."""

    train: float
    validation: float
    test: float = 0.0

    def of(self, part: Part) -> float:
        return {Part.TRAIN: self.train, Part.VALIDATION: self.validation, Part.TEST: self.test}[
            part
        ]

    def exact_shares(self) -> dict[Part, Fraction]:
        """Each part's share as an exact fraction of their sum (the shares add up to 1 exactly).

        Splitting works on these rather than on the floats, so 0.7/0.2/0.1 (whose float sum is
        0.9999999999999999) never leaves a row in no part or a boundary off by one.
        """
        values = {part: Fraction(self.of(part)) for part in PARTS}
        total = sum(values.values(), Fraction(0))
        return {part: value / total for part, value in values.items()}


#: Train 0.8, validation 0.2, no test part.
DEFAULT_RATIOS = SplitRatios(train=0.8, validation=0.2, test=0.0)
#: The fixed default seed (0 is a valid seed).
DEFAULT_SEED = 0


@dataclass(frozen=True)
class SplitSpec:
    """A resolved split spec: every field set."""

    strategy: SplitStrategy = SplitStrategy.HASH
    ratios: SplitRatios = DEFAULT_RATIOS
    seed: int = DEFAULT_SEED

    @property
    def parts_in_use(self) -> tuple[Part, ...]:
        """The parts that get rows: train, validation, and test when its ratio is positive."""
        return tuple(part for part in PARTS if self.ratios.of(part) > 0)

    def to_document(self) -> dict[str, Any]:
        """The spec as the manifest writes it (``{strategy, seed, ratios: {...}}``)."""
        return {
            "strategy": self.strategy.value,
            "seed": self.seed,
            "ratios": {
                "train": self.ratios.train,
                "validation": self.ratios.validation,
                "test": self.ratios.test,
            },
        }


#: The spec of a dataset that never set a split policy.
DEFAULT_SPEC = SplitSpec()


def _ratio_violations(ratios: SplitRatios, prefix: str) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    finite = True
    for part in PARTS:
        value, field = ratios.of(part), f"{prefix}ratios.{part.value}"
        if not math.isfinite(value):
            violations.append(
                FieldViolation(field, f"{value} is not a finite number", "NOT_FINITE")
            )
            finite = False
        elif not 0.0 <= value <= 1.0:
            violations.append(
                FieldViolation(field, f"{value} is outside [0, 1]", "RATIO_OUT_OF_RANGE")
            )
        elif part is not Part.TEST and value == 0.0:
            violations.append(
                FieldViolation(field, f"the {part.value} ratio must be above 0", "RATIO_REQUIRED")
            )
    if finite:
        total = ratios.train + ratios.validation + ratios.test
        if abs(total - 1.0) > RATIO_SUM_TOLERANCE:
            violations.append(
                FieldViolation(
                    f"{prefix}ratios",
                    f"train + validation + test = {total:.6g}; the ratios must sum to 1",
                    "RATIOS_DO_NOT_SUM_TO_ONE",
                )
            )
    return violations


def validate_spec(spec: SplitSpec, *, field_prefix: str) -> None:
    """Raise :class:`InvalidArgument` listing every problem of ``spec``, or return."""
    violations = _ratio_violations(spec.ratios, field_prefix)
    if not _INT64_MIN <= spec.seed <= _INT64_MAX:
        violations.append(
            FieldViolation(f"{field_prefix}seed", "the seed must fit in 64 bits", "OUT_OF_RANGE")
        )
    if violations:
        raise InvalidArgument("invalid split spec", violations)


def split_id_for(dataset_version: str, spec: SplitSpec) -> str:
    """The split's id: derived from the version and the resolved spec, so asking for the same
    split twice (a redelivered event, a repeated CreateSplit) names the same split."""
    identity = json.dumps(
        {"dataset_version": dataset_version, "spec": spec.to_document()},
        sort_keys=True,
        separators=(",", ":"),
    )
    return "s-" + hashlib.sha256(identity.encode()).hexdigest()[:20]
