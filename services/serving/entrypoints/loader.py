"""The release loader: one thread that loads the newest announced release of each model.

Kafka and the alias watcher :meth:`~ReleaseLoader.offer` releases; an offer above the revision
loaded replaces any older pending one of the same model, and the thread applies the pending
releases (fetch, verify, load, swap — :func:`services.serving.handlers.releases.apply_release`).
"""

from __future__ import annotations

import logging
import threading

from services.serving.domain import FollowDecision, Release
from services.serving.handlers import releases
from services.serving.handlers.deps import ServingDeps

log = logging.getLogger(__name__)


class ReleaseLoader:
    def __init__(self, deps: ServingDeps) -> None:
        self._deps = deps
        self._pending: dict[str, Release] = {}
        self._changed = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def offer(self, release: Release) -> FollowDecision:
        decision = releases.announce(self._deps, release)
        if decision is FollowDecision.LOAD:
            with self._changed:
                pending = self._pending.get(release.model)
                if pending is None or pending.revision < release.revision:
                    self._pending[release.model] = release
                    self._changed.notify_all()
        return decision

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="release-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._stopping:
                    self._changed.wait()
                if self._stopping:
                    return
                model = next(iter(self._pending))
                release = self._pending.pop(model)
            try:
                releases.apply_release(self._deps, release)
            except Exception:
                log.exception("loading a release failed", extra={"model": release.model})
