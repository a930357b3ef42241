"""Paired significance tests on the same examples: McNemar's test and the paired bootstrap.

Both compare a candidate with a baseline scored on the *same* examples, so per-example noise
that affects both (an ambiguous review, a hard question) cancels out.

* :func:`mcnemar_p_value` is for per-example 0/1 metrics (accuracy, exact match). Only the
  discordant pairs carry information: ``b`` examples the baseline got right and the candidate
  wrong, ``c`` the other way round. Under "no difference" each discordant pair is a fair coin,
  so ``min(b, c)`` follows Binomial(b + c, 1/2). The two-sided p-value is the exact binomial
  tail, doubled and capped at 1, computed exactly with integer arithmetic while
  ``b + c`` is at most :data:`EXACT_MCNEMAR_LIMIT`; above it (where the binomial is very close
  to normal) it uses the normal approximation with continuity correction,
  ``z = (|b - c| - 1) / sqrt(b + c)``.
* The paired bootstrap (:func:`resample_weights`, :func:`summarize_bootstrap`) is for
  everything else (loss, macro-F1, token accuracy). It resamples examples with replacement —
  the same resample for candidate and baseline, which is what makes it paired — recomputes
  both metrics on each resample, and reads the percentile confidence interval of the delta
  off the resampled deltas δ*. The two-sided p-value is the shift method (Efron &
  Tibshirani, *An Introduction to the Bootstrap*, §16.4): the δ* centred on the observed δ̂
  stand in for the null distribution, so ``p = P*(|δ* - δ̂| ≥ |δ̂|)``, with the +1 correction
  of Davison & Hinkley so a finite number of resamples never claims p = 0. (Reading p off
  the uncentred δ*, i.e. how often δ* crosses zero, would call four discordant examples out
  of two hundred "significant" whenever they all go the same way; the shift method does
  not.)

Resampling is expressed as a matrix of resample weights (how many times each example was
drawn in each resample); a sum-based metric of every resample is then one matrix product,
which keeps a thousand resamples of a few thousand examples in the milliseconds.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Largest number of discordant pairs for which McNemar's p-value is computed exactly.
EXACT_MCNEMAR_LIMIT = 10_000

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def binomial_two_sided_p_value(successes: int, trials: int) -> float:
    """Two-sided p-value of ``successes`` in ``trials`` fair coin flips (Binomial(n, 1/2)).

    Exact (integer arithmetic) up to :data:`EXACT_MCNEMAR_LIMIT` trials, normal approximation with
    continuity correction above.
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 1.0
    low = min(successes, trials - successes)
    if trials <= EXACT_MCNEMAR_LIMIT:
        # C(n, i+1) = C(n, i)·(n-i)/(i+1), exactly, in integers: O(low) big-int steps
        term, tail = 1, 1
        for i in range(low):
            term = term * (trials - i) // (i + 1)
            tail += term
        # int / int is correctly rounded even for numbers far beyond a float's range
        return min(1.0, 2 * tail / 2**trials)
    z = max(0.0, (abs(trials - 2 * low) - 1) / math.sqrt(trials))
    return min(1.0, math.erfc(z / math.sqrt(2)))


def mcnemar_p_value(baseline_correct: npt.ArrayLike, candidate_correct: npt.ArrayLike) -> float:
    """McNemar's two-sided p-value for paired 0/1 outcomes of the same examples."""
    base = np.asarray(baseline_correct, dtype=bool)
    cand = np.asarray(candidate_correct, dtype=bool)
    if base.shape != cand.shape:
        raise ValueError("paired outcomes must have the same shape")
    baseline_only = int(np.count_nonzero(base & ~cand))
    candidate_only = int(np.count_nonzero(cand & ~base))
    return binomial_two_sided_p_value(candidate_only, baseline_only + candidate_only)


def resample_weights(example_count: int, resamples: int, seed: int, stream: str = "") -> IntArray:
    """A ``(resamples, example_count)`` matrix: times each example is drawn per resample.

    Seeded by ``seed`` and a stable hash of ``stream`` (e.g. the slice name), so every slice
    gets its own reproducible resamples, independent of the order slices are judged in.
    """
    if example_count <= 0:
        return np.zeros((resamples, 0), dtype=np.int64)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(stream.encode())])
    draws = rng.integers(0, example_count, size=(resamples, example_count))
    offsets = (np.arange(resamples, dtype=np.int64) * example_count)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=resamples * example_count)
    return counts.reshape(resamples, example_count).astype(np.int64)


@dataclass(frozen=True)
class BootstrapResult:
    """The resampled distribution of a paired delta, summarised."""

    ci_lower: float
    ci_upper: float
    p_value: float
    #: Resamples on which the metric was defined for both sides (NaNs dropped).
    valid_resamples: int


def summarize_bootstrap(
    observed: float, deltas: FloatArray, confidence_level: float
) -> BootstrapResult:
    """Percentile interval of resampled ``deltas`` and the shift-method two-sided p-value of
    the ``observed`` delta (see the module doc)."""
    finite = deltas[np.isfinite(deltas)]
    if finite.size == 0 or not math.isfinite(observed):
        return BootstrapResult(math.nan, math.nan, 1.0, 0)
    tail = (1.0 - confidence_level) / 2.0
    lower, upper = np.quantile(finite, [tail, 1.0 - tail])
    n = finite.size
    # the tiny slack keeps floating-point noise from splitting ties at |δ* - δ̂| == |δ̂|
    as_extreme = np.count_nonzero(np.abs(finite - observed) >= abs(observed) - 1e-12)
    p_value = min(1.0, (as_extreme + 1) / (n + 1))
    return BootstrapResult(float(lower), float(upper), float(p_value), int(n))
