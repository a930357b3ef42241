"""Predict and Generate: run on the model served when the request started."""

from __future__ import annotations

from services.serving.domain import Prediction, ServedModel
from services.serving.domain.releases import Generation, WrongTaskType
from services.serving.handlers.deps import ServingDeps
from shared import names
from shared.errors import FieldViolation, InvalidArgument
from shared.task_types import TaskType

#: Longest text or prompt accepted, in characters (the model truncates to its max length).
MAX_INPUT_CHARACTERS = 100_000
MAX_NEW_TOKENS_LIMIT = 1024


def _input_text(text: str, field: str) -> str:
    if not text.strip():
        raise InvalidArgument(f"{field} is empty", [FieldViolation(field, "must not be empty")])
    if len(text) > MAX_INPUT_CHARACTERS:
        raise InvalidArgument(
            f"{field} is too long",
            [FieldViolation(field, f"at most {MAX_INPUT_CHARACTERS} characters")],
        )
    return text


def _served(deps: ServingDeps, model: str, task: TaskType, method: str) -> ServedModel:
    served = deps.table.current(model)
    if served.release.task is not task:
        raise WrongTaskType(model, served.release.task, method)
    return served


def predict(
    deps: ServingDeps, model: str, text: str
) -> tuple[Prediction, list[float], ServedModel]:
    """Classify ``text``: the prediction (remembered for feedback), every label's score, and
    the served model that answered."""
    with deps.metrics.request_seconds.labels("Predict").time():
        _input_text(text, "text")
        served = _served(
            deps, names.MODEL.check(model, field="model"), TaskType.CLASSIFICATION, "Predict"
        )
        scores = [float(s) for s in served.model.classify(text)]
        labels = tuple(served.model.labels)
        best = max(range(len(scores)), key=scores.__getitem__)
        prediction = Prediction(
            prediction_id=deps.new_id(),
            model=model,
            checkpoint=served.release.checkpoint,
            revision=served.release.revision,
            task=TaskType.CLASSIFICATION,
            label=labels[best],
            labels=labels,
        )
        deps.predictions.remember(prediction)
        deps.metrics.predictions.labels(model, prediction.label).inc()
        return prediction, scores, served


def generate(
    deps: ServingDeps, model: str, prompt: str, max_new_tokens: int = 0
) -> tuple[Prediction, Generation, ServedModel]:
    """Complete ``prompt`` greedily (stops at an end-of-turn token)."""
    with deps.metrics.request_seconds.labels("Generate").time():
        _input_text(prompt, "prompt")
        if not 0 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise InvalidArgument(
                "max_new_tokens is out of range",
                [FieldViolation("max_new_tokens", f"0 to {MAX_NEW_TOKENS_LIMIT}")],
            )
        served = _served(
            deps, names.MODEL.check(model, field="model"), TaskType.CAUSAL_LM, "Generate"
        )
        generation = served.model.generate(prompt, max_new_tokens or deps.max_new_tokens)
        prediction = Prediction(
            prediction_id=deps.new_id(),
            model=model,
            checkpoint=served.release.checkpoint,
            revision=served.release.revision,
            task=TaskType.CAUSAL_LM,
        )
        deps.predictions.remember(prediction)
        deps.metrics.predictions.labels(model, "").inc()
        return prediction, generation, served
