"""The registry's Kafka subscriptions: decode by ``ce_type`` (the consumer loop), call a handler.

The consumer loop gives each event its own transaction, skips event ids already applied and
commits the offset after the effect; these functions only pick the handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from services.registry import handlers
from services.registry.handlers.deps import RegistryDeps
from shared.events import ReceivedEvent, Subscription
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.trainer.v1 import events_pb2 as trainer_events


def registry_subscriptions(deps: RegistryDeps) -> Sequence[Subscription]:
    """CheckpointReady registers, EvaluationCompleted promotes, RegressionDetected rolls back."""

    def checkpoint_ready(event: ReceivedEvent[Any], session: Session) -> None:
        handlers.on_checkpoint_ready(session, deps, event.message, event_id=event.envelope.id)

    def evaluation_completed(event: ReceivedEvent[Any], session: Session) -> None:
        handlers.on_evaluation_completed(session, deps, event.message, event_id=event.envelope.id)

    def regression_detected(event: ReceivedEvent[Any], session: Session) -> None:
        handlers.on_regression_detected(session, deps, event.message)

    return [
        Subscription(trainer_events.CheckpointReady, checkpoint_ready),
        Subscription(evaluator_events.EvaluationCompleted, evaluation_completed),
        Subscription(evaluator_events.RegressionDetected, regression_detected),
    ]
