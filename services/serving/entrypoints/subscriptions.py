"""The Kafka face of the serving service: ModelPromoted and ModelRolledBack announce releases.

The handler only records the announcement (a revision above the one loaded) for the release
loader; loading happens there, so the consumer never blocks on a model load and a burst of
announcements (a new consumer group replaying history) loads only the newest. Serving keeps no
state in the database: the shared loop's event-id bookkeeping is all the session is used for.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from services.serving.adapters.protos import release_from_event
from services.serving.entrypoints.loader import ReleaseLoader
from services.serving.entrypoints.watcher import AliasWatcher
from shared.events import ReceivedEvent, Subscription
from tuneline.registry.v1 import events_pb2 as registry_events_pb2


def subscriptions(loader: ReleaseLoader, watcher: AliasWatcher) -> Sequence[Subscription]:
    """A model first heard of on Kafka (created after the start) gets its watch too."""

    def model_promoted(
        event: ReceivedEvent[registry_events_pb2.ModelPromoted], _session: Session
    ) -> None:
        loader.offer(release_from_event(event.message))
        watcher.watch(event.message.model)

    def model_rolled_back(
        event: ReceivedEvent[registry_events_pb2.ModelRolledBack], _session: Session
    ) -> None:
        loader.offer(release_from_event(event.message))
        watcher.watch(event.message.model)

    return [
        Subscription(registry_events_pb2.ModelPromoted, model_promoted),
        Subscription(registry_events_pb2.ModelRolledBack, model_rolled_back),
    ]
