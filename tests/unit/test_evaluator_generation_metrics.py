"""Generation metrics of causal LM: word-overlap F1, ROUGE-L and JSON validity, per example,
kept through the outcome store and paired by the gate like every other metric."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.evaluator.adapters.outcome_store import (
    outcomes_from_document,
    outcomes_to_document,
)
from services.evaluator.adapters.text_metrics import json_valid, rouge_l, token_f1, words
from services.evaluator.domain.gate import (
    GatePolicy,
    MetricGate,
    PairedSet,
    SignificanceTest,
    judge,
)
from services.evaluator.domain.outcomes import CausalLMOutcomes, point_values
from shared.task_types import TaskType


def test_token_f1_is_the_f1_of_the_bags_of_words():
    assert token_f1("Paris is the capital.", "The capital is PARIS") == 1.0
    # 2 of 3 answer words right, 2 of 4 reference words found: P = 2/3, R = 1/2
    assert token_f1("the capital Lyon", "the capital is Paris") == pytest.approx(4 / 7)
    assert token_f1("nothing alike", "Paris") == 0.0
    assert token_f1("", "") == 1.0
    assert words("Ça va? Très bien!") == ["ça", "va", "très", "bien"]


def test_rouge_l_follows_the_longest_common_subsequence_of_words():
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 0.5 / 1.5)
    assert rouge_l("sat cat the", "the cat sat") == pytest.approx(1 / 3)
    assert rouge_l("très bien", "très bien") == 1.0  # not dropped as non-ASCII


def test_json_valid_parses_and_checks_the_schema():
    schema = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
    assert json_valid('{"city": "Paris"}', schema)
    assert not json_valid('{"city": 7}', schema)
    assert not json_valid('{"city": "Paris"', schema)
    assert json_valid("[1, 2]", {})
    assert not json_valid("Paris", {})


def _outcomes(n: int, *, f1: float, json_ok: np.ndarray) -> CausalLMOutcomes:
    return CausalLMOutcomes(
        example_ids=tuple(f"q-{i}" for i in range(n)),
        slices=("",) * n,
        loss_sums=np.full(n, 4.0),
        token_counts=np.full(n, 4),
        correct_tokens=np.full(n, 2),
        exact_matches=np.zeros(n),
        token_f1=np.full(n, f1),
        rouge_l=np.full(n, f1 / 2),
        json_valid=json_ok,
    )


def test_generation_metrics_average_over_the_examples_that_have_them():
    outcomes = _outcomes(4, f1=0.5, json_ok=np.array([1.0, 0.0, 1.0, math.nan]))
    values = point_values(outcomes)
    assert values["token_f1"] == pytest.approx(0.5)
    assert values["rouge_l"] == pytest.approx(0.25)
    assert values["json_valid"] == pytest.approx(2 / 3)
    assert outcomes.metric_counts()["json_valid"] == 3
    # outcomes without them (stored before they existed) simply do not report them
    old = CausalLMOutcomes(
        example_ids=("a",),
        slices=("",),
        loss_sums=np.array([1.0]),
        token_counts=np.array([1]),
        correct_tokens=np.array([1]),
        exact_matches=np.array([1.0]),
    )
    assert {"token_f1", "rouge_l", "json_valid"}.isdisjoint(point_values(old))


def test_the_store_keeps_generation_metrics_and_reads_documents_without_them():
    outcomes = _outcomes(3, f1=0.75, json_ok=np.array([1.0, math.nan, 0.0]))
    back = outcomes_from_document(outcomes_to_document(outcomes))
    assert isinstance(back, CausalLMOutcomes)
    assert back.token_f1.tolist() == [0.75] * 3
    np.testing.assert_array_equal(back.json_valid, outcomes.json_valid)
    document = outcomes_to_document(outcomes)
    for name in ("token_f1", "rouge_l", "json_valid"):
        del document[name]
    older = outcomes_from_document(document)
    assert isinstance(older, CausalLMOutcomes)
    assert np.isnan(older.token_f1).all()


def test_the_gate_pairs_generation_metrics_per_example():
    n = 200
    base = _outcomes(n, f1=0.8, json_ok=np.ones(n))
    worse_json = np.ones(n)
    worse_json[:60] = 0.0
    candidate = _outcomes(n, f1=0.4, json_ok=worse_json)
    policy = GatePolicy.resolve(
        TaskType.CAUSAL_LM,
        metrics=(MetricGate("token_f1", 0.05), MetricGate("json_valid", 0.05)),
    )
    result = judge([PairedSet("", candidate, base)], policy)
    by_metric = {c.metric: c for c in result.comparisons if not c.slice}
    assert by_metric["json_valid"].test is SignificanceTest.MCNEMAR
    assert by_metric["token_f1"].test is SignificanceTest.PAIRED_BOOTSTRAP
    assert by_metric["json_valid"].delta == pytest.approx(-0.3)
    assert by_metric["token_f1"].delta == pytest.approx(-0.4)
    assert result.verdict.value == "REGRESSED"
