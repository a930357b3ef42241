"""The registry's Kafka subscriptions: decode by ``ce_type`` (the consumer loop), convert the event
to its domain value (``adapters/protos.py``), call a handler.

The consumer loop gives each event its own transaction, skips event ids already applied and
commits the offset after the effect; these functions only pick the handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from services.registry.adapters import protos
from services.registry.handlers import checkpoints, promotion, rollback
from services.registry.handlers.deps import RegistryDeps
from shared.events import ReceivedEvent, Subscription
from tuneline.evaluator.v1 import events_pb2 as evaluator_events
from tuneline.trainer.v1 import events_pb2 as trainer_events


def registry_subscriptions(deps: RegistryDeps) -> Sequence[Subscription]:
    """CheckpointReady registers, EvaluationCompleted promotes, RegressionDetected rolls back."""

    def checkpoint_ready(event: ReceivedEvent[Any], session: Session) -> None:
        ready = protos.ready_checkpoint_from_proto(event.message)
        checkpoints.on_checkpoint_ready(session, deps, ready, event_id=event.envelope.id)

    def evaluation_completed(event: ReceivedEvent[Any], session: Session) -> None:
        evaluation = protos.completed_evaluation_from_proto(event.message)
        promotion.on_evaluation_completed(session, deps, evaluation, event_id=event.envelope.id)

    def regression_detected(event: ReceivedEvent[Any], session: Session) -> None:
        rollback.on_regression_detected(session, deps, protos.regression_from_proto(event.message))

    return [
        Subscription(trainer_events.CheckpointReady, checkpoint_ready),
        Subscription(evaluator_events.EvaluationCompleted, evaluation_completed),
        Subscription(evaluator_events.RegressionDetected, regression_detected),
    ]
