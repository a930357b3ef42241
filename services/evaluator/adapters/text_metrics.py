"""How close a generated answer is to its reference, per example (torch-free).

* ``token_f1`` — SQuAD-style: the F1 of the bags of words of answer and reference (words
  lower-cased, punctuation dropped, Unicode letters and digits kept); 1.0 when both are empty.
* ``rouge_l`` — the ROUGE-L F-measure (longest common subsequence of words) of Google's
  ``rouge-score`` package, on the same words.
* ``json_valid`` — whether the answer is a JSON document that the row's JSON Schema
  (``json_schema``) accepts; ``{}`` accepts any JSON value.

The same words feed both overlap metrics, so their numbers move together and non-English
answers are scored too (``rouge-score``'s own tokenizer keeps only ASCII letters and digits).
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from typing import Any

import jsonschema
from rouge_score import rouge_scorer


def words(text: str) -> list[str]:
    """Lower-cased words of ``text``, punctuation and symbols dropped."""
    kept = "".join(" " if unicodedata.category(c)[0] in "PSZC" else c for c in text.casefold())
    return kept.split()


class _Words:
    """The tokenizer interface ``rouge_score`` expects, over :func:`words`."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


_ROUGE_L = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())


def token_f1(answer: str, reference: str) -> float:
    """F1 of the bags of words of ``answer`` and ``reference``."""
    predicted, expected = Counter(words(answer)), Counter(words(reference))
    if not predicted and not expected:
        return 1.0
    common = sum((predicted & expected).values())
    if common == 0:
        return 0.0
    precision = common / sum(predicted.values())
    recall = common / sum(expected.values())
    return 2 * precision * recall / (precision + recall)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure of ``answer`` against ``reference``; 1.0 when both have no words."""
    if not words(answer) and not words(reference):
        return 1.0
    return float(_ROUGE_L.score(reference, answer)["rougeL"].fmeasure)


def json_valid(answer: str, schema: dict[str, Any]) -> bool:
    """Whether ``answer`` parses as JSON and ``schema`` accepts it."""
    try:
        document = json.loads(answer)
    except ValueError:
        return False
    validator = jsonschema.validators.validator_for(schema)(schema)
    return bool(validator.is_valid(document))
