"""A paired difference δ = candidate - baseline, measured on the same examples, and its tests.

Every question the gate asks is a one-sided test of δ against a *margin* (the tolerated drop,
or zero): "is δ below the margin?" (a regression) and "is δ above it?" (non-inferiority). Both
kinds of difference here answer them through one standardized statistic ``z(margin)``, which
decreases as the margin grows, so that

* ``p_value_below(m) = Φ(z(m))`` tests H1: δ < m, and ``p_value_above(m) = Φ(-z(m))`` tests
  H1: δ > m;
* the interval at confidence ``1 - 2alpha`` is ``{m : |z(m)| ≤ z₁₋alpha}``, and its lower bound lies
  above ``m`` exactly when ``p_value_above(m) < alpha`` (the interval and the tests never disagree).

:class:`PairedProportions` is for per-example 0/1 outcomes (accuracy, exact match): Tango's
score test and interval for the difference of paired proportions (Tango 1998, *Stat. Med.* 17,
891-908; Newcombe 1998 found it among the best-behaved). Only the discordant pairs carry
information, and unlike the Wald interval it stays honest with few or no discordant pairs: 0 of
100 examples changing is *not* proof that nothing changed. At margin 0 its statistic is
McNemar's, ``(c - b) / √(b + c)``.

:class:`NormalDifference` is for everything else (loss, macro-F1, token accuracy): the observed
difference with a standard error from the paired bootstrap, ``z(m) = (δ̂ - m) / se``. Only the
standard error is read off the resamples, so a few hundred resamples give it to a few percent
whatever alpha is; percentile intervals would need tens of thousands for the small alpha that Holm's
procedure uses.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

_STANDARD_NORMAL = NormalDist()
#: Bisection steps for the interval bounds: far below any printed precision.
_BISECTION_STEPS = 80


def normal_cdf(z: float) -> float:
    """Φ(z), with the infinities (a zero standard error) mapped to 0 and 1."""
    if math.isinf(z):
        return 1.0 if z > 0 else 0.0
    return _STANDARD_NORMAL.cdf(z)


def normal_quantile(probability: float) -> float:
    """Φ⁻¹(p) for p in (0, 1)."""
    return _STANDARD_NORMAL.inv_cdf(probability)


class PairedDifference(ABC):
    """An estimate of δ = candidate - baseline, and the test of δ against any margin."""

    #: Where δ can lie (wider than any observed value for unbounded metrics).
    support: tuple[float, float] = (-math.inf, math.inf)

    @property
    @abstractmethod
    def estimate(self) -> float:
        """The observed δ̂."""

    @property
    @abstractmethod
    def standard_error(self) -> float:
        """The standard error of δ̂ under "no difference" (the one that ``z(0)`` uses)."""

    @abstractmethod
    def z(self, margin: float) -> float:
        """The standardized evidence against δ = ``margin``: positive when δ̂ lies above it."""

    @abstractmethod
    def standard_error_at(self, difference: float) -> float:
        """The standard error δ̂ would have if the true δ were ``difference`` (for power)."""

    def p_value_below(self, margin: float) -> float:
        """One-sided p-value of H0: δ ≥ margin against H1: δ < margin."""
        return normal_cdf(self.z(margin))

    def p_value_above(self, margin: float) -> float:
        """One-sided p-value of H0: δ ≤ margin against H1: δ > margin."""
        return normal_cdf(-self.z(margin))

    def two_sided_p_value(self, margin: float = 0.0) -> float:
        return min(1.0, 2.0 * min(self.p_value_below(margin), self.p_value_above(margin)))

    def interval(self, confidence_level: float) -> tuple[float, float]:
        """The two-sided interval at ``confidence_level``: the margins the test does not reject
        at ``(1 - confidence_level) / 2`` on either side."""
        if not 0 < confidence_level < 1:
            raise ValueError("confidence_level must be in (0, 1)")
        critical = normal_quantile(0.5 + confidence_level / 2)
        return (self._crossing(critical), self._crossing(-critical))

    def _crossing(self, target: float) -> float:
        """The margin where ``z`` falls to ``target`` (clamped to the support)."""
        low, high = self._search_range()
        if self.z(low) <= target:
            return low
        if self.z(high) >= target:
            return high
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            if self.z(middle) > target:
                low = middle
            else:
                high = middle
        return (low + high) / 2

    def _search_range(self) -> tuple[float, float]:
        return self.support


@dataclass(frozen=True)
class PairedProportions(PairedDifference):
    """Paired 0/1 outcomes on ``n`` examples: ``worse`` examples the baseline got right and the
    candidate wrong, ``better`` the other way round (Tango's score test and interval)."""

    worse: int
    better: int
    n: int
    support = (-1.0, 1.0)

    def __post_init__(self) -> None:
        if self.n < 1 or self.worse < 0 or self.better < 0 or self.worse + self.better > self.n:
            raise ValueError(
                f"need 0 <= worse + better <= n >= 1, got {self.worse}, {self.better}, {self.n}"
            )

    @classmethod
    def of(
        cls, baseline_correct: npt.ArrayLike, candidate_correct: npt.ArrayLike
    ) -> PairedProportions:
        base = np.asarray(baseline_correct, dtype=bool)
        cand = np.asarray(candidate_correct, dtype=bool)
        if base.shape != cand.shape:
            raise ValueError("paired outcomes must have the same shape")
        return cls(
            worse=int(np.count_nonzero(base & ~cand)),
            better=int(np.count_nonzero(cand & ~base)),
            n=int(base.size),
        )

    @property
    def estimate(self) -> float:
        return (self.better - self.worse) / self.n

    @property
    def standard_error(self) -> float:
        return math.sqrt(self.better + self.worse) / self.n

    def z(self, margin: float) -> float:
        # Tango's notation: x12 = better, x21 = worse, δ0 = margin; q21 is the maximum
        # likelihood of P(baseline right, candidate wrong) under δ = δ0.
        n, x12, x21 = self.n, self.better, self.worse
        d0 = min(max(margin, -1.0 + 1e-12), 1.0 - 1e-12)
        a = 2.0 * n
        b = -x12 - x21 + (2.0 * n - x12 + x21) * d0
        c = -x21 * d0 * (1.0 - d0)
        q21 = (math.sqrt(max(b * b - 4.0 * a * c, 0.0)) - b) / (2.0 * a)
        variance = n * (2.0 * q21 + d0 * (1.0 - d0))
        numerator = x12 - x21 - n * d0
        if variance <= 0.0:
            return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
        return numerator / math.sqrt(variance)

    def standard_error_at(self, difference: float) -> float:
        # The disagreements that go both ways are noise; a change of δ adds |δ| one-sided
        # disagreements on top. At least one disagreement, so that power is never promised
        # from a sample that has not shown any.
        noise = max(2 * min(self.worse, self.better), 1) / self.n
        spread = abs(difference)
        return math.sqrt(max(noise + spread - spread * spread, 0.0) / self.n)


@dataclass(frozen=True)
class NormalDifference(PairedDifference):
    """An observed difference with a standard error, tested with the normal distribution."""

    observed: float
    error: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.observed) or not self.error >= 0:
            raise ValueError(f"need a finite difference and an error >= 0, got {self}")

    @classmethod
    def from_bootstrap(cls, observed: float, resampled: npt.ArrayLike) -> NormalDifference:
        """δ̂ with the standard deviation of its paired-bootstrap replicates (NaNs dropped)."""
        values = np.asarray(resampled, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size < 2:
            raise ValueError("the bootstrap needs at least two finite resampled differences")
        return cls(observed, float(np.std(finite, ddof=1)))

    @property
    def estimate(self) -> float:
        return self.observed

    @property
    def standard_error(self) -> float:
        return self.error

    def z(self, margin: float) -> float:
        distance = self.observed - margin
        if self.error == 0.0:
            return 0.0 if distance == 0 else math.copysign(math.inf, distance)
        return distance / self.error

    def standard_error_at(self, difference: float) -> float:
        return self.error

    def interval(self, confidence_level: float) -> tuple[float, float]:
        if not 0 < confidence_level < 1:
            raise ValueError("confidence_level must be in (0, 1)")
        half = normal_quantile(0.5 + confidence_level / 2) * self.error
        return (self.observed - half, self.observed + half)
