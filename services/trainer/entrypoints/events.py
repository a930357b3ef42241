"""The trainer's Kafka subscriptions: decode, call a handler (the consumer loop commits)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.orm import Session

from services.trainer.adapters import protos
from services.trainer.adapters.notifications import JobChanges
from services.trainer.handlers import policy_jobs
from services.trainer.handlers.deps import TrainerDeps
from shared.events import ReceivedEvent, Subscription
from tuneline.dataset.v1 import events_pb2 as dataset_events_pb2
from tuneline.splitter.v1 import events_pb2 as splitter_events_pb2

log = logging.getLogger(__name__)


def subscriptions(deps: TrainerDeps, changes: JobChanges) -> Sequence[Subscription]:
    """SplitCreated → remember the split, make the jobs its dataset's policies ask for (once
    its version's audit is known); DatasetAudited → remember the verdict, make the jobs of the
    splits that waited for it (FAILED ones when it BLOCKED the version)."""

    def on_split_created(
        event: ReceivedEvent[splitter_events_pb2.SplitCreated], session: Session
    ) -> None:
        try:
            split = protos.split_from_event(event.message)
        except ValueError as error:
            # nothing can train on it; dead-lettering would not make it trainable either
            log.warning(
                "ignoring a SplitCreated", extra={"split": event.message.split, "error": str(error)}
            )
            return
        created = policy_jobs.on_split_created(session, deps, split)
        if created:
            log.info("jobs created for a new split", extra={"split": split.name, "jobs": created})
            changes.notify()  # the supervisor re-reads the queue after this commit

    def on_dataset_audited(
        event: ReceivedEvent[dataset_events_pb2.DatasetAudited], session: Session
    ) -> None:
        try:
            audit = protos.dataset_audit_from_event(event.message)
        except ValueError as error:
            log.warning(
                "ignoring a DatasetAudited",
                extra={"dataset_version": event.message.dataset_version, "error": str(error)},
            )
            return
        created = policy_jobs.on_dataset_audited(session, deps, audit)
        if created:
            log.info(
                "jobs created for an audited dataset version",
                extra={"dataset_version": audit.dataset_version, "jobs": created},
            )
            changes.notify()

    return [
        Subscription(splitter_events_pb2.SplitCreated, on_split_created),
        Subscription(dataset_events_pb2.DatasetAudited, on_dataset_audited),
    ]
