"""Feedback on predictions, and the live quality reports it adds up to."""

from __future__ import annotations

import logging

from services.serving.domain import LiveQualityBatch, Prediction, ReportOutcome
from services.serving.domain.predictions import PredictionNotFound
from services.serving.handlers.deps import ServingDeps
from shared.errors import FieldViolation, InvalidArgument

log = logging.getLogger(__name__)


def submit_feedback(
    deps: ServingDeps, prediction_id: str, *, label: str | None = None, score: float | None = None
) -> tuple[Prediction, bool]:
    """Record the true outcome of a prediction; returns it and whether this call counted it."""
    with deps.metrics.request_seconds.labels("SubmitFeedback").time():
        if not prediction_id:
            raise InvalidArgument(
                "prediction_id is required", [FieldViolation("prediction_id", "required")]
            )
        if label is None and score is None:
            raise InvalidArgument(
                "feedback needs an outcome",
                [FieldViolation("outcome", "set `label` or `score`")],
            )
        try:
            prediction, counted = deps.predictions.record_outcome(
                prediction_id, label=label, score=score, success_threshold=deps.success_threshold
            )
        except PredictionNotFound:
            deps.metrics.feedback.labels("", "unknown_prediction").inc()
            raise
        if not counted:
            deps.metrics.feedback.labels(prediction.model, "duplicate").inc()
            return prediction, False
        outcome = "success" if prediction.success else "failure"
        deps.metrics.feedback.labels(prediction.model, outcome).inc()
        waiting = deps.ledger.record(
            prediction.model, prediction.checkpoint, bool(prediction.success), deps.clock()
        )
        if waiting >= deps.report_every_feedbacks:
            deps.report_due()
        return prediction, True


def report_live_quality(deps: ServingDeps) -> list[tuple[LiveQualityBatch, ReportOutcome]]:
    """Send what accumulated (and what is still in flight) to the registry."""
    results = []
    for batch in deps.ledger.take_batches(deps.new_id):
        outcome = deps.sink.report(batch)
        deps.ledger.settle(batch, outcome)
        deps.metrics.live_quality_reports.labels(batch.model, outcome.value).inc()
        if outcome is ReportOutcome.DROPPED:
            log.warning(
                "live quality counts dropped: the registry refused them for good",
                extra={
                    "model": batch.model,
                    "checkpoint": batch.checkpoint,
                    "trials": batch.trials,
                    "request_id": batch.request_id,
                },
            )
        results.append((batch, outcome))
    return results
