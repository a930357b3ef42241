"""The label-audit loop of the dataset service: a thread that finishes PENDING audits.

A version's audit is added PENDING in the transaction that creates the version, so the loop
needs no event: it is woken after each commit (``DatasetDeps.audit_wake``) and also polls, so
audits left PENDING by a restart are picked up. The model work runs in the auditor's worker
process; this thread only reads rows and records verdicts.
"""

from __future__ import annotations

import logging
import threading

from services.dataset.adapters.label_auditor import ProcessLabelAuditor
from services.dataset.handlers.audits import run_pending_audits
from services.dataset.handlers.deps import DatasetDeps

log = logging.getLogger(__name__)


class AuditRunner:
    """Runs :func:`~services.dataset.handlers.audits.run_pending_audits` until stopped (a
    background component)."""

    def __init__(
        self,
        deps: DatasetDeps,
        auditor: ProcessLabelAuditor,
        *,
        poll_seconds: float = 5.0,
    ) -> None:
        self._deps = deps
        self._auditor = auditor
        self._poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="dataset-label-audit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._auditor.stop()  # kills an audit in progress: it stays PENDING for the next start
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                while (
                    not self._stopping.is_set()
                    and run_pending_audits(self._deps, self._auditor) > 0
                ):
                    pass
            except Exception:  # a database hiccup: retried at the next poll
                log.exception("label audit loop failed; retrying")
            self._wake.wait(self._poll_seconds)
