"""What a model did on each example of an evaluation set, and the metrics computed from it.

The evaluation engine produces one :class:`ClassificationOutcomes` or
:class:`CausalLMOutcomes` per (model, evaluation set); everything after that — metrics overall
and per slice, the paired tests, the gate — is computed here from these per-example records, so
it runs without torch and a stored baseline can be compared with any later candidate.

Every metric is a ratio of weighted sums over examples. :meth:`metric_samples` takes a weight
matrix (one row per resample, one column per example; a row of ones is the plain value) and
returns every metric for every row, which is how the paired bootstrap stays vectorised.

Metric names and units follow ``tuneline.common.v1.MetricValue``:

* classification: ``loss`` (mean cross-entropy per example, nats), ``accuracy``, ``macro_f1``
  (unweighted mean of per-class F1 over the classes present in the labels or the predictions
  of the examples scored, as scikit-learn does by default), ``recall/<label>`` (for labels
  present among the examples scored);
* causal_lm: ``loss`` (cross-entropy per completion token, nats), ``token_accuracy`` (share of
  completion tokens whose argmax prediction is right), ``exact_match`` (share of generated
  examples whose greedy generation equals the completion; only a bounded subset is generated,
  so its example count may be smaller), ``token_f1`` and ``rouge_l`` (mean word-overlap F1 and
  ROUGE-L F-measure of the generated answer against the completion, over generated examples),
  ``json_valid`` (share of generated examples whose row declares a ``json_schema`` that
  generated a JSON document the schema accepts). All are per example, so all are paired.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

LOSS = "loss"
ACCURACY = "accuracy"
MACRO_F1 = "macro_f1"
RECALL_PREFIX = "recall/"
TOKEN_ACCURACY = "token_accuracy"  # noqa: S105 - a metric name, not a secret
EXACT_MATCH = "exact_match"
TOKEN_F1 = "token_f1"  # noqa: S105 - a metric name, not a secret
ROUGE_L = "rouge_l"
JSON_VALID = "json_valid"


def higher_is_better(metric: str) -> bool:
    """Every metric but ``loss`` improves upwards."""
    return metric != LOSS


def per_example_binary(metric: str) -> bool:
    """Whether the metric is a mean of one 0/1 outcome per example (McNemar applies)."""
    return metric in (ACCURACY, EXACT_MATCH, JSON_VALID)


class ExampleMismatch(ValueError):
    """Candidate and baseline outcomes are not about the same examples."""


def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
        )


def _order_for(own_ids: Sequence[str], wanted: Sequence[str]) -> IntArray:
    """Indices that reorder ``own_ids`` into ``wanted``; raises when the sets differ."""
    position = {example_id: i for i, example_id in enumerate(own_ids)}
    missing = [example_id for example_id in wanted if example_id not in position]
    if missing or len(own_ids) != len(wanted):
        extra = sorted(set(own_ids) - set(wanted))
        raise ExampleMismatch(
            f"outcomes cover different examples: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})"
        )
    return np.asarray([position[example_id] for example_id in wanted], dtype=np.int64)


@dataclass(frozen=True, eq=False)
class ClassificationOutcomes:
    """Per-example classification results: the true and predicted label, and the loss."""

    example_ids: tuple[str, ...]
    slices: tuple[str, ...]
    true_labels: tuple[str, ...]
    predicted_labels: tuple[str, ...]
    #: Cross-entropy of the true label, nats.
    losses: FloatArray

    def __post_init__(self) -> None:
        n = len(self.example_ids)
        sizes = {len(self.slices), len(self.true_labels), len(self.predicted_labels)}
        if sizes != {n} or self.losses.shape != (n,):
            raise ValueError("every per-example column needs one entry per example")

    def __len__(self) -> int:
        return len(self.example_ids)

    def select(self, indices: IntArray) -> ClassificationOutcomes:
        picked = [int(i) for i in indices]
        return ClassificationOutcomes(
            example_ids=tuple(self.example_ids[i] for i in picked),
            slices=tuple(self.slices[i] for i in picked),
            true_labels=tuple(self.true_labels[i] for i in picked),
            predicted_labels=tuple(self.predicted_labels[i] for i in picked),
            losses=self.losses[indices],
        )

    def aligned_to(self, example_ids: Sequence[str]) -> ClassificationOutcomes:
        return self.select(_order_for(self.example_ids, example_ids))

    def correctness(self, metric: str) -> FloatArray | None:
        """1.0/0.0 per example for ``accuracy``; ``None`` for metrics that are not 0/1."""
        if metric != ACCURACY:
            return None
        return np.asarray(
            [t == p for t, p in zip(self.true_labels, self.predicted_labels, strict=True)],
            dtype=np.float64,
        )

    def metric_counts(self) -> dict[str, int]:
        n = len(self)
        counts = {LOSS: n, ACCURACY: n, MACRO_F1: n}
        for label in sorted(set(self.true_labels)):
            counts[RECALL_PREFIX + label] = self.true_labels.count(label)
        return counts

    def metric_samples(self, weights: IntArray | FloatArray) -> dict[str, FloatArray]:
        weights = np.asarray(weights, dtype=np.float64)
        totals = weights.sum(axis=1)
        correct = self.correctness(ACCURACY)
        assert correct is not None
        samples: dict[str, FloatArray] = {
            LOSS: _ratio(weights @ self.losses, totals),
            ACCURACY: _ratio(weights @ correct, totals),
        }
        labels = sorted(set(self.true_labels) | set(self.predicted_labels))
        index = {label: k for k, label in enumerate(labels)}
        truth = np.zeros((len(self), len(labels)))
        predicted = np.zeros((len(self), len(labels)))
        truth[np.arange(len(self)), [index[t] for t in self.true_labels]] = 1.0
        predicted[np.arange(len(self)), [index[p] for p in self.predicted_labels]] = 1.0
        true_positives = weights @ (truth * predicted)
        support = weights @ truth
        predicted_count = weights @ predicted
        f1 = _ratio(2 * true_positives, support + predicted_count)  # NaN: class absent here
        with np.errstate(invalid="ignore"):
            present = np.isfinite(f1)
            f1_sum = np.where(present, f1, 0.0).sum(axis=1)
            samples[MACRO_F1] = _ratio(f1_sum, present.sum(axis=1).astype(np.float64))
        recall = _ratio(true_positives, support)
        for label in sorted(set(self.true_labels)):
            samples[RECALL_PREFIX + label] = recall[:, index[label]]
        return samples


def _not_measured() -> FloatArray:
    return np.empty(0)


def _mean_of_defined(weights: FloatArray, values: FloatArray) -> FloatArray:
    """Weighted mean of the finite ``values`` per weight row (NaN where none is finite)."""
    defined = np.isfinite(values)
    return _ratio(weights @ np.where(defined, values, 0.0), weights @ defined.astype(np.float64))


@dataclass(frozen=True, eq=False)
class CausalLMOutcomes:
    """Per-example causal-LM results over the completion tokens, and of greedy generation."""

    example_ids: tuple[str, ...]
    slices: tuple[str, ...]
    #: Cross-entropy summed over the example's completion tokens, nats.
    loss_sums: FloatArray
    #: Completion tokens scored (after truncation).
    token_counts: IntArray
    #: Completion tokens whose argmax prediction was the true token.
    correct_tokens: IntArray
    #: 1.0 / 0.0 for generated examples, NaN for examples not generated.
    exact_matches: FloatArray
    #: Word-overlap F1 and ROUGE-L of the generated answer, NaN for examples not generated.
    #: Left empty (outcomes stored before these metrics existed): NaN for every example.
    token_f1: FloatArray = field(default_factory=_not_measured)
    rouge_l: FloatArray = field(default_factory=_not_measured)
    #: 1.0 / 0.0 for generated examples whose row declares a JSON schema, NaN for the others.
    json_valid: FloatArray = field(default_factory=_not_measured)

    def __post_init__(self) -> None:
        n = len(self.example_ids)
        for name in ("token_f1", "rouge_l", "json_valid"):
            if getattr(self, name).shape == (0,):
                object.__setattr__(self, name, np.full(n, math.nan))
        columns = (
            self.loss_sums,
            self.token_counts,
            self.correct_tokens,
            self.exact_matches,
            self.token_f1,
            self.rouge_l,
            self.json_valid,
        )
        if len(self.slices) != n or any(column.shape != (n,) for column in columns):
            raise ValueError("every per-example column needs one entry per example")

    def __len__(self) -> int:
        return len(self.example_ids)

    @property
    def generated(self) -> BoolArray:
        return np.isfinite(self.exact_matches)

    def select(self, indices: IntArray) -> CausalLMOutcomes:
        picked = [int(i) for i in indices]
        return CausalLMOutcomes(
            example_ids=tuple(self.example_ids[i] for i in picked),
            slices=tuple(self.slices[i] for i in picked),
            loss_sums=self.loss_sums[indices],
            token_counts=self.token_counts[indices],
            correct_tokens=self.correct_tokens[indices],
            exact_matches=self.exact_matches[indices],
            token_f1=self.token_f1[indices],
            rouge_l=self.rouge_l[indices],
            json_valid=self.json_valid[indices],
        )

    def aligned_to(self, example_ids: Sequence[str]) -> CausalLMOutcomes:
        return self.select(_order_for(self.example_ids, example_ids))

    def correctness(self, metric: str) -> FloatArray | None:
        """1.0/0.0 per example where defined (NaN elsewhere) for ``exact_match`` and
        ``json_valid``."""
        if metric == EXACT_MATCH:
            return self.exact_matches
        if metric == JSON_VALID:
            return self.json_valid
        return None

    def metric_counts(self) -> dict[str, int]:
        scored = int(np.count_nonzero(self.token_counts > 0))
        return {
            LOSS: scored,
            TOKEN_ACCURACY: scored,
            EXACT_MATCH: int(np.count_nonzero(self.generated)),
            TOKEN_F1: int(np.count_nonzero(np.isfinite(self.token_f1))),
            ROUGE_L: int(np.count_nonzero(np.isfinite(self.rouge_l))),
            JSON_VALID: int(np.count_nonzero(np.isfinite(self.json_valid))),
        }

    def metric_samples(self, weights: IntArray | FloatArray) -> dict[str, FloatArray]:
        weights = np.asarray(weights, dtype=np.float64)
        tokens = weights @ self.token_counts.astype(np.float64)
        generated = self.generated.astype(np.float64)
        return {
            LOSS: _ratio(weights @ self.loss_sums, tokens),
            TOKEN_ACCURACY: _ratio(weights @ self.correct_tokens.astype(np.float64), tokens),
            EXACT_MATCH: _ratio(
                weights @ np.nan_to_num(self.exact_matches, nan=0.0), weights @ generated
            ),
            TOKEN_F1: _mean_of_defined(weights, self.token_f1),
            ROUGE_L: _mean_of_defined(weights, self.rouge_l),
            JSON_VALID: _mean_of_defined(weights, self.json_valid),
        }


#: Per-example results of one model on one evaluation set, of either task. Both kinds offer
#: ``select`` / ``aligned_to`` (subsets, reordering by example id), ``metric_samples`` (every
#: metric per weight row), ``metric_counts`` and ``correctness`` (1.0/0.0 per example for 0/1
#: metrics, NaN where undefined; ``None`` for other metrics).
ExampleOutcomes = ClassificationOutcomes | CausalLMOutcomes


def point_values(outcomes: ExampleOutcomes) -> dict[str, float]:
    """Every metric of ``outcomes`` that is defined (NaN-valued metrics are left out)."""
    samples = outcomes.metric_samples(np.ones((1, len(outcomes))))
    return {name: float(values[0]) for name, values in samples.items() if np.isfinite(values[0])}


def slice_indices(outcomes: ExampleOutcomes) -> dict[str, IntArray]:
    """Example indices per slice: ``""`` is every example, then each non-empty slice value."""
    groups: dict[str, list[int]] = {"": list(range(len(outcomes)))}
    for i, slice_name in enumerate(outcomes.slices):
        if slice_name:
            groups.setdefault(slice_name, []).append(i)
    return {name: np.asarray(indices, dtype=np.int64) for name, indices in groups.items()}
