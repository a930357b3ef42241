"""Events that cannot apply yet (PARKED) or never will (REFUSED): how they are recorded (their
type names, ``protos.CHECKPOINT_READY`` and ``protos.EVALUATION_COMPLETED``, come with them)."""

from __future__ import annotations

import logging
from datetime import datetime

from services.registry.adapters.commit_hooks import after_commit
from services.registry.adapters.repository import RegistryRepository
from services.registry.handlers.deps import RegistryDeps

log = logging.getLogger(__name__)


def defer(
    repo: RegistryRepository,
    deps: RegistryDeps,
    *,
    model: str,
    source_checkpoint: str,
    event_type: str,
    event_id: str,
    payload: bytes,
    status: str,
    reason: str,
    now: datetime,
) -> None:
    repo.defer_event(
        model=model,
        source_checkpoint=source_checkpoint,
        event_type=event_type,
        event_id=event_id,
        payload=payload,
        status=status,
        reason=reason,
        now=now,
    )
    log.warning(
        "event deferred",
        extra={"event_type": event_type, "model": model, "status": status, "why": reason},
    )
    if deps.metrics:
        metrics = deps.metrics
        after_commit(repo.session, lambda: metrics.events_deferred.labels(event_type, status).inc())
