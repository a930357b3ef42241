"""Resampling for the paired bootstrap: the same resample of examples for both sides.

The paired bootstrap resamples examples with replacement — the same resample for candidate
and baseline, which is what makes it paired — and recomputes both metrics on each resample;
the spread of the resampled differences is the standard error the gate tests with
(``shared.stats.paired.NormalDifference``). Resampling at example level is the right cluster
unit for token metrics too: the tokens of one completion are not independent.

Resampling is expressed as a matrix of resample weights (how many times each example was
drawn in each resample); a sum-based metric of every resample is then one matrix product,
which keeps a thousand resamples of a few thousand examples in the milliseconds.
"""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


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
