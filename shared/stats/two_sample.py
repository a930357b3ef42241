"""Has an evaluation set drifted from the training data? Two answers on embeddings (numpy only).

* :func:`classifier_two_sample_test` — can a classifier tell the two samples apart? A linear
  discriminant (Fisher's, with ridge shrinkage) is trained to separate them on K-1 folds and
  scored on the K-th; the out-of-fold AUC is the statistic (0.5: indistinguishable). Its null
  distribution comes from refitting with the sample labels permuted, so the p-value is exact
  whatever the embedding geometry (Lopez-Paz & Oquab, *Revisiting classifier two-sample
  tests*, ICLR 2017). A p-value alone flags trivia at large n (the complaint about drift tests
  at scale), so the effect size ``AUC - 0.5`` is reported beside it and a caller flags only
  when both are past their thresholds.
* :func:`far_from_reference` — the share of evaluation rows whose nearest training row is
  farther than training rows usually are from each other. The distance threshold is calibrated
  on the training data itself: half of it is the reference, and the ``quantile`` (0.99) of the
  other half's nearest-reference distances is the cut-off, so with no shift about
  ``1 - quantile`` of the evaluation rows lie beyond it.

Both reduce the embeddings first: at most ``max_rows`` rows per sample (seeded), then the
pooled rows are projected on their first ``components`` principal axes. The projection ignores
which sample a row came from, so it does not bias the permutation test; it keeps the
discriminant's solve small (hundreds of permutations cost seconds, not minutes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatMatrix = NDArray[np.float64]

#: Rows kept per sample (a random subset, seeded, beyond it).
DEFAULT_MAX_ROWS = 2000
#: Principal axes the test works on.
DEFAULT_COMPONENTS = 32
#: Folds of the out-of-fold AUC.
DEFAULT_FOLDS = 5
#: Permutations calibrating the p-value (its smallest value is ``1 / (permutations + 1)``).
DEFAULT_PERMUTATIONS = 200
#: Ridge added to the within-sample covariance, relative to its mean variance.
_SHRINKAGE = 0.1
#: Quantile of the training rows' own nearest-neighbour distances beyond which a row is far.
DEFAULT_FAR_QUANTILE = 0.99


@dataclass(frozen=True)
class TwoSampleResult:
    """A classifier two-sample test: out-of-fold AUC, ``AUC - 0.5`` and its permutation p."""

    auc: float
    p_value: float
    permutations: int
    reference_rows: int
    sample_rows: int

    @property
    def effect_size(self) -> float:
        return self.auc - 0.5

    def separates(self, *, min_effect: float, significance_level: float) -> bool:
        """Whether the samples differ by at least ``min_effect``, shown at ``significance_level``
        (both must hold: the p-value alone flags trivia at large n)."""
        return self.effect_size >= min_effect and self.p_value <= significance_level


@dataclass(frozen=True)
class FarShare:
    """How many sample rows lie farther from the reference than the calibrated distance."""

    share: float
    distance: float
    quantile: float
    far_rows: int
    sample_rows: int


def _subsample(rows: FloatMatrix, max_rows: int, rng: np.random.Generator) -> FloatMatrix:
    if len(rows) <= max_rows:
        return rows
    return rows[np.sort(rng.choice(len(rows), size=max_rows, replace=False))]


def _project(pooled: FloatMatrix, components: int) -> FloatMatrix:
    """``pooled`` centred and projected on its first ``components`` principal axes."""
    centred = pooled - pooled.mean(axis=0)
    if centred.shape[1] <= components:
        return centred
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    projected: FloatMatrix = centred @ axes[:components].T
    return projected


def _auc(scores: FloatMatrix, positive: NDArray[np.bool_]) -> float:
    """Mann-Whitney AUC of ``scores`` for ``positive`` against the rest (ties count half)."""
    _, position, tied = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(tied) - (tied - 1) / 2)[position]  # 1-based, ties share their mean rank
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _out_of_fold_auc(
    features: FloatMatrix, positive: NDArray[np.bool_], folds: NDArray[np.int64], k: int
) -> float:
    """AUC of a shrunk Fisher discriminant, each fold scored by a fit on the other folds."""
    scores = np.empty(len(features), dtype=np.float64)
    dims = features.shape[1]
    for fold in range(k):
        held = folds == fold
        train, labels = features[~held], positive[~held]
        first, second = train[labels], train[~labels]
        mean_first, mean_second = first.mean(axis=0), second.mean(axis=0)
        within = np.concatenate((first - mean_first, second - mean_second))
        covariance = within.T @ within / max(1, len(within) - 2)
        ridge = _SHRINKAGE * float(np.trace(covariance)) / dims + 1e-12
        direction = np.linalg.solve(covariance + ridge * np.eye(dims), mean_first - mean_second)
        scores[held] = features[held] @ direction
    return _auc(scores, positive)


def classifier_two_sample_test(
    reference: FloatMatrix,
    sample: FloatMatrix,
    *,
    permutations: int = DEFAULT_PERMUTATIONS,
    folds: int = DEFAULT_FOLDS,
    max_rows: int = DEFAULT_MAX_ROWS,
    components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
) -> TwoSampleResult:
    """Test whether ``sample`` (rows: embeddings) comes from ``reference``'s distribution.

    Needs at least ``folds`` rows in each. The p-value is ``(1 + #{permuted AUC >= AUC}) /
    (1 + permutations)``; permutations reuse the folds, so only which rows are "sample" changes.
    """
    if len(reference) < folds or len(sample) < folds:
        raise ValueError(f"each sample needs at least {folds} rows")
    rng = np.random.default_rng(seed)
    reference = _subsample(np.asarray(reference, dtype=np.float64), max_rows, rng)
    sample = _subsample(np.asarray(sample, dtype=np.float64), max_rows, rng)
    features = _project(np.concatenate((reference, sample)), components)
    positive = np.zeros(len(features), dtype=np.bool_)
    positive[len(reference) :] = True
    fold_of = rng.permutation(np.arange(len(features)) % folds).astype(np.int64)
    observed = _out_of_fold_auc(features, positive, fold_of, folds)
    as_extreme = sum(
        _out_of_fold_auc(features, rng.permutation(positive), fold_of, folds) >= observed
        for _ in range(permutations)
    )
    return TwoSampleResult(
        auc=observed,
        p_value=(1 + as_extreme) / (1 + permutations),
        permutations=permutations,
        reference_rows=len(reference),
        sample_rows=len(sample),
    )


def _unit_rows(rows: FloatMatrix) -> FloatMatrix:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit: FloatMatrix = rows / np.where(norms > 0, norms, 1.0)
    return unit


def _nearest_distances(queries: FloatMatrix, corpus: FloatMatrix) -> NDArray[np.float64]:
    """Cosine distance from each query to its nearest corpus row (rows unit-normed)."""
    nearest = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), 512):
        similarity = queries[start : start + 512] @ corpus.T
        nearest[start : start + 512] = 1.0 - similarity.max(axis=1)
    return nearest


def far_from_reference(
    reference: FloatMatrix,
    sample: FloatMatrix,
    *,
    quantile: float = DEFAULT_FAR_QUANTILE,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
) -> FarShare:
    """The share of ``sample`` rows farther (cosine) from every reference row than the
    ``quantile`` of the reference's own held-out nearest-neighbour distances (module doc).
    Needs at least two reference rows."""
    if len(reference) < 2 or len(sample) == 0:
        raise ValueError("needs two reference rows and one sample row")
    rng = np.random.default_rng(seed)
    reference = _unit_rows(_subsample(np.asarray(reference, dtype=np.float64), 2 * max_rows, rng))
    sample = _unit_rows(_subsample(np.asarray(sample, dtype=np.float64), max_rows, rng))
    shuffled = rng.permutation(len(reference))
    half = len(reference) // 2
    corpus, held_out = reference[shuffled[half:]], reference[shuffled[:half]]
    distance = float(np.quantile(_nearest_distances(held_out, corpus), quantile))
    far = int((_nearest_distances(sample, corpus) > distance).sum())
    return FarShare(
        share=far / len(sample),
        distance=distance,
        quantile=quantile,
        far_rows=far,
        sample_rows=len(sample),
    )
