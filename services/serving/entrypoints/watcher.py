"""The alias watcher: WatchAlias on each followed model's ``production``, one thread each.

At start it catches up (the current state comes first); afterwards it is the fallback that
keeps an instance following while Kafka lags or is down. A broken stream is opened again
after a backoff, resuming after the revision loaded. The watcher owns its registry channel
(its streams end when it is closed at stop). Releases go to the release loader, which
ignores what is not newer than what is loaded (Kafka usually told it first).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from services.serving.adapters.registry_gateway import RegistryGateway
from services.serving.domain import Release, ServingTable
from tuneline.client.errors import TunelineError

log = logging.getLogger(__name__)

MAX_RETRY_SECONDS = 30.0


class AliasWatcher:
    def __init__(
        self,
        registry: RegistryGateway,
        table: ServingTable,
        offer: Callable[[Release], object],
        *,
        models: Sequence[str],
        retry_seconds: float,
    ) -> None:
        self._registry = registry
        self._table = table
        self._offer = offer
        self._models = list(models)
        self._retry_seconds = retry_seconds
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watched: set[str] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        thread = threading.Thread(target=self._start_watches, name="alias-watch", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _start_watches(self) -> None:
        models = self._models
        delay = self._retry_seconds
        while not models and not self._stopping.is_set():
            try:
                models = self._registry.models()
                break
            except TunelineError as error:
                log.warning(
                    "cannot list the registry's models; retrying", extra={"error": str(error)}
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
            except ValueError:
                if self._stopping.is_set():
                    return  # the channel was closed under the call: stopping
                raise
        for model in models:
            self.watch(model)

    def watch(self, model: str) -> None:
        """Watch ``model`` too (a model Kafka announced after the start), once, if followed."""
        if not self._table.follow(model):
            return
        with self._lock:
            if model in self._watched or self._stopping.is_set():
                return
            self._watched.add(model)
            thread = threading.Thread(
                target=self._watch, args=(model,), name=f"watch-{model}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _watch(self, model: str) -> None:
        delay = self._retry_seconds
        while not self._stopping.is_set():
            try:
                revision = self._table.loaded_revision(model)
                for release in self._registry.watch(model, after_revision=revision):
                    delay = self._retry_seconds
                    self._offer(release)
                    if self._stopping.is_set():
                        return
            except TunelineError as error:
                log.warning(
                    "WatchAlias failed; watching again after a pause",
                    extra={"model": model, "error": str(error), "retry_in_seconds": delay},
                )
            except ValueError:
                if self._stopping.is_set():
                    return  # the channel was closed under a call: stopping
                raise
            self._stopping.wait(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    def stop(self) -> None:
        self._stopping.set()
        # the watcher owns its registry channel: closing it cancels the open streams
        self._registry.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
