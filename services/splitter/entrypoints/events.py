"""The Kafka face of the splitter: the events it consumes, decoded and handed to handlers.

The shared consumer loop picks the subscription by ``ce_type``, opens the transaction, records
the event id as applied in it and commits the offset only afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from services.splitter.adapters.protos import version_from_event
from services.splitter.handlers import SplitterDeps, on_dataset_versioned
from shared.events import ReceivedEvent, Subscription
from tuneline.dataset.v1 import events_pb2 as dataset_events_pb2


def subscriptions(deps: SplitterDeps) -> Sequence[Subscription]:
    """DatasetVersioned → record the version and split it by its dataset's policy."""

    def dataset_versioned(
        event: ReceivedEvent[dataset_events_pb2.DatasetVersioned], session: Session
    ) -> None:
        on_dataset_versioned(session, deps, version_from_event(event.message))

    return [Subscription(dataset_events_pb2.DatasetVersioned, dataset_versioned)]
