"""The live quality reporter: sends feedback counts every N outcomes or T seconds."""

from __future__ import annotations

import logging
import threading

from services.serving.handlers import feedback
from services.serving.handlers.deps import ServingDeps

log = logging.getLogger(__name__)


class LiveQualityReporter:
    def __init__(self, deps: ServingDeps, *, interval_seconds: float) -> None:
        self._deps = deps
        self._interval = interval_seconds
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Report now (enough outcomes wait)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="live-quality", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            self._report()

    def _report(self) -> None:
        try:
            feedback.report_live_quality(self._deps)
        except Exception:
            log.exception("reporting live quality failed")

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._report()  # a last pass: outcomes counted before the stop are not lost
