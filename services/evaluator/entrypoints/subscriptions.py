"""The evaluator's Kafka subscriptions: decode by ``ce_type`` (the consumer loop), convert the event
to its domain value (``adapters/protos.py``), call a handler.

The consumer loop gives each event its own transaction, skips event ids already applied and
commits the offset after the effect; these functions only pick the handler. None of them
evaluates anything: a CheckpointReady queues an evaluation and returns at once, so the
partition never waits for a model to be scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from services.evaluator.adapters import protos
from services.evaluator.handlers.deps import EvaluatorDeps
from services.evaluator.handlers.events import (
    on_checkpoint_ready,
    on_dataset_versioned,
    on_split_created,
)
from shared.events import ReceivedEvent, Subscription
from tuneline.dataset.v1 import events_pb2 as dataset_events
from tuneline.splitter.v1 import events_pb2 as splitter_events
from tuneline.trainer.v1 import events_pb2 as trainer_events


def evaluator_subscriptions(
    deps: EvaluatorDeps, *, trainer_artifact_root: str | None = None
) -> Sequence[Subscription]:
    """CheckpointReady queues evaluations; SplitCreated and DatasetVersioned say where rows are.

    A CheckpointReady whose artifact is not under ``trainer_artifact_root`` (the trainer's
    artifact root as a URI) goes to the DLQ unevaluated.

    The supervisor finds a queued evaluation at its next poll (half a second by default),
    after the consumer loop has committed it.
    """

    def checkpoint_ready(event: ReceivedEvent[Any], session: Session) -> None:
        on_checkpoint_ready(
            session,
            deps,
            protos.ready_checkpoint_from_event(event.message),
            trainer_artifact_root=trainer_artifact_root,
        )

    def split_created(event: ReceivedEvent[Any], session: Session) -> None:
        on_split_created(session, protos.split_location_from_event(event.message))

    def dataset_versioned(event: ReceivedEvent[Any], session: Session) -> None:
        on_dataset_versioned(session, protos.dataset_version_location_from_event(event.message))

    return [
        Subscription(trainer_events.CheckpointReady, checkpoint_ready),
        Subscription(splitter_events.SplitCreated, split_created),
        Subscription(dataset_events.DatasetVersioned, dataset_versioned),
    ]
