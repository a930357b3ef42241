"""What the serving service asks and tells the registry, as the ``serving`` identity.

* :meth:`RegistryGateway.watch` — the ``production`` alias of a model as a stream of releases
  (WatchAlias: the current state first, then every move), the catch-up at start and the
  fallback when Kafka lags or is down;
* :meth:`RegistryGateway.report` — one live quality batch (ReportLiveQuality with counts and
  a request id, so a retry after a lost answer counts once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from services.serving.adapters.protos import release_from_alias, task_from_proto
from services.serving.domain import LiveQualityBatch, Release, ReportOutcome
from shared.task_types import TaskType
from tuneline.client.errors import (
    AbortedError,
    DeadlineExceededError,
    ResourceExhaustedError,
    TunelineError,
    UnavailableError,
)
from tuneline.client.registry import RegistryClient, alias_name

log = logging.getLogger(__name__)

#: Answers after which the same report may succeed later; anything else is final.
_RETRYABLE = (UnavailableError, DeadlineExceededError, ResourceExhaustedError, AbortedError)


class RegistryGateway:
    def __init__(self, client: RegistryClient, *, metric: str, source: str) -> None:
        self._client = client
        self._metric = metric
        self._source = source

    def models(self) -> list[str]:
        """Every model the registry has (to follow all of them)."""
        return [model.name for model in self._client.list_models()]

    def task(self, model: str) -> TaskType:
        return task_from_proto(self._client.get_model(model).task_type, field="task_type")

    def watch(self, model: str, *, after_revision: int) -> Iterator[Release]:
        """Releases of ``model``'s production alias, from ``after_revision`` on (0: the current
        state first). Ends when the server ends the stream; raises TunelineError on failure."""
        task = self.task(model)
        for message in self._client.watch_alias(alias_name(model), after_revision=after_revision):
            release = release_from_alias(message.alias, model, task)
            if release is not None:
                yield release

    def report(self, batch: LiveQualityBatch) -> ReportOutcome:
        try:
            self._client.report_live_quality(
                batch.model,
                metric=self._metric,
                successes=batch.successes,
                trials=batch.trials,
                checkpoint=batch.checkpoint,
                window_seconds=batch.window_seconds,
                source=self._source,
                request_id=batch.request_id,
            )
        except _RETRYABLE as error:
            log.warning(
                "live quality report not delivered; will retry",
                extra={"request_id": batch.request_id, "error": str(error)},
            )
            return ReportOutcome.RETRY
        except TunelineError as error:
            # FAILED_PRECONDITION (not production any more), INVALID_ARGUMENT, NOT_FOUND,
            # PERMISSION_DENIED: the same report would be refused again
            log.warning(
                "live quality report refused",
                extra={
                    "request_id": batch.request_id,
                    "code": str(error.code),
                    "error": str(error),
                },
            )
            return ReportOutcome.DROPPED
        return ReportOutcome.ACCEPTED

    def close(self) -> None:
        self._client.close()
