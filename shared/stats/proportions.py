"""A binomial proportion with its Wilson score interval.

Used wherever a share of n is judged against a goal: a model's regression rate over a window
(the scorecard) and the merged-vs-unmerged agreement of the parity check. Unlike the normal
(Wald) interval it stays inside [0, 1] and is sensible at 0 of n and n of n, where such shares
usually are.
"""

from __future__ import annotations

import math
from statistics import NormalDist


def wilson_bounds(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval of ``successes / trials`` at ``level``.

    For a one-sided bound at level 1 - a, ask for the two-sided interval at 1 - 2a and use one
    end of it."""
    if trials <= 0:
        raise ValueError(f"trials must be positive, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == trials else min(1.0, centre + half)
    return lower, upper
