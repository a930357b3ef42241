"""Per-example outcomes as artifacts: written once, read back to pair with later candidates.

An outcomes artifact is one JSON document (sorted keys, compact) holding the columns of a
:class:`ClassificationOutcomes` or :class:`CausalLMOutcomes`; NaN (an example that was not
generated) is written as ``null``. Its key in the artifact store derives from what it is
about — (subject, evaluation set version, scoring fingerprint) — and its row in
``evaluator_scored_outcomes`` (see :mod:`.repository`) is what look-ups go through.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np

from services.evaluator.adapters.repository import StoredOutcomes
from services.evaluator.domain.outcomes import (
    CausalLMOutcomes,
    ClassificationOutcomes,
    ExampleOutcomes,
)
from shared.artifacts import ArtifactError, ArtifactStore
from shared.task_types import TaskType


class OutcomesUnreadable(Exception):
    """A stored outcomes artifact is missing, altered or malformed."""


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in values.tolist()]


def outcomes_to_document(outcomes: ExampleOutcomes) -> dict[str, Any]:
    """The JSON document of ``outcomes``."""
    if isinstance(outcomes, ClassificationOutcomes):
        return {
            "task_type": TaskType.CLASSIFICATION.value,
            "example_ids": list(outcomes.example_ids),
            "slices": list(outcomes.slices),
            "true_labels": list(outcomes.true_labels),
            "predicted_labels": list(outcomes.predicted_labels),
            "losses": _floats(outcomes.losses),
        }
    if isinstance(outcomes, CausalLMOutcomes):
        return {
            "task_type": TaskType.CAUSAL_LM.value,
            "example_ids": list(outcomes.example_ids),
            "slices": list(outcomes.slices),
            "loss_sums": _floats(outcomes.loss_sums),
            "token_counts": [int(v) for v in outcomes.token_counts.tolist()],
            "correct_tokens": [int(v) for v in outcomes.correct_tokens.tolist()],
            "exact_matches": _floats(outcomes.exact_matches),
            "token_f1": _floats(outcomes.token_f1),
            "rouge_l": _floats(outcomes.rouge_l),
            "json_valid": _floats(outcomes.json_valid),
        }
    raise TypeError(f"unknown outcomes type {type(outcomes).__name__}")


def _array(values: list[Any], dtype: Any) -> np.ndarray:
    return np.asarray([math.nan if v is None else v for v in values], dtype=dtype)


def outcomes_from_document(document: dict[str, Any]) -> ExampleOutcomes:
    """Outcomes back from their JSON document."""
    try:
        task_type = TaskType(document["task_type"])
        ids = tuple(str(i) for i in document["example_ids"])
        slices = tuple(str(s) for s in document["slices"])
        if task_type is TaskType.CLASSIFICATION:
            return ClassificationOutcomes(
                example_ids=ids,
                slices=slices,
                true_labels=tuple(str(v) for v in document["true_labels"]),
                predicted_labels=tuple(str(v) for v in document["predicted_labels"]),
                losses=_array(document["losses"], np.float64),
            )
        return CausalLMOutcomes(
            example_ids=ids,
            slices=slices,
            loss_sums=_array(document["loss_sums"], np.float64),
            token_counts=_array(document["token_counts"], np.int64),
            correct_tokens=_array(document["correct_tokens"], np.int64),
            exact_matches=_array(document["exact_matches"], np.float64),
            # absent from documents stored before these metrics: not measured (NaN)
            token_f1=_array(document.get("token_f1", []), np.float64),
            rouge_l=_array(document.get("rouge_l", []), np.float64),
            json_valid=_array(document.get("json_valid", []), np.float64),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise OutcomesUnreadable(f"malformed outcomes document: {error!r}") from error


class OutcomeArtifacts:
    """Writes and reads outcomes artifacts in the evaluator's artifact store."""

    def __init__(self, artifacts: ArtifactStore) -> None:
        self._artifacts = artifacts

    @staticmethod
    def artifact_key(subject_key: str, set_key: str, scoring_fingerprint: str) -> str:
        digest = hashlib.sha256(
            f"{subject_key}\n{set_key}\n{scoring_fingerprint}".encode()
        ).hexdigest()
        return f"outcomes/{digest[:2]}/{digest}.json"

    def write(
        self,
        outcomes: ExampleOutcomes,
        *,
        subject_key: str,
        set_key: str,
        scoring_fingerprint: str,
        computed_by: str,
    ) -> StoredOutcomes:
        body = json.dumps(
            outcomes_to_document(outcomes), sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode()
        stored = self._artifacts.put_bytes(
            self.artifact_key(subject_key, set_key, scoring_fingerprint), body
        )
        return StoredOutcomes(
            subject_key=subject_key,
            set_key=set_key,
            scoring_fingerprint=scoring_fingerprint,
            artifact_uri=stored.uri,
            artifact_sha256=stored.sha256,
            example_count=len(outcomes),
            computed_by=computed_by,
        )

    def read(self, stored: StoredOutcomes) -> ExampleOutcomes:
        try:
            with self._artifacts.open(stored.artifact_uri) as handle:
                body = handle.read()
        except (ArtifactError, OSError) as error:
            raise OutcomesUnreadable(str(error)) from error
        if hashlib.sha256(body).hexdigest() != stored.artifact_sha256:
            raise OutcomesUnreadable(f"{stored.artifact_uri} does not match its sha256")
        return outcomes_from_document(json.loads(body))
