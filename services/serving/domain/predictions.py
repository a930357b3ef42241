"""Recent predictions, by id, for feedback: a bounded memory (least recently used goes first).

Feedback names a prediction by the id its response carried; the memory says which model and
checkpoint made it and what it predicted, so the outcome counts for the checkpoint that
answered (not the one serving when the feedback arrives). Once ``capacity`` newer predictions
were made, an id is forgotten (NOT_FOUND: expired). An outcome is counted once per prediction.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from shared.errors import FieldViolation, InvalidArgument, NotFound
from shared.task_types import TaskType


@dataclass(frozen=True)
class Prediction:
    """What one Predict or Generate answered."""

    prediction_id: str
    model: str
    checkpoint: str
    revision: int
    task: TaskType
    #: The predicted label (classification); empty for a generation.
    label: str = ""
    #: The model's labels, to check a feedback label against.
    labels: tuple[str, ...] = ()
    #: The outcome recorded by feedback; ``None`` until then.
    success: bool | None = None


class PredictionNotFound(NotFound):
    def __init__(self, prediction_id: str) -> None:
        super().__init__("prediction (unknown or expired)", prediction_id)


class PredictionMemory:
    """At most ``capacity`` recent predictions."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._items: OrderedDict[str, Prediction] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def remember(self, prediction: Prediction) -> None:
        with self._lock:
            self._items[prediction.prediction_id] = prediction
            self._items.move_to_end(prediction.prediction_id)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def record_outcome(
        self,
        prediction_id: str,
        *,
        label: str | None = None,
        score: float | None = None,
        success_threshold: float = 0.5,
    ) -> tuple[Prediction, bool]:
        """Record the true outcome; returns the prediction (with ``success``) and whether this
        call counted it (False: it had an outcome already, which stands)."""
        with self._lock:
            prediction = self._items.get(prediction_id)
            if prediction is None:
                raise PredictionNotFound(prediction_id)
            success = _success(prediction, label=label, score=score, threshold=success_threshold)
            if prediction.success is not None:
                return prediction, False
            recorded = replace(prediction, success=success)
            self._items[prediction_id] = recorded
            return recorded, True


def _success(
    prediction: Prediction, *, label: str | None, score: float | None, threshold: float
) -> bool:
    if label is not None:
        if prediction.task is not TaskType.CLASSIFICATION:
            raise InvalidArgument(
                "a generation takes a score, not a label",
                [FieldViolation("label", "use `score` for a causal LM prediction")],
            )
        if label not in prediction.labels:
            raise InvalidArgument(
                f"label {label!r} is not one of the model's labels",
                [FieldViolation("label", f"must be one of {list(prediction.labels)}")],
            )
        return label == prediction.label
    if score is None or not 0.0 <= score <= 1.0:
        raise InvalidArgument(
            "feedback needs a label or a score in [0, 1]",
            [FieldViolation("score" if score is not None else "outcome", "a score in [0, 1]")],
        )
    return score >= threshold
