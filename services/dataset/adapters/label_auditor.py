"""The label audit's worker process, as the handlers see it (:class:`ProcessLabelAuditor`).

The dataset service's gRPC process never imports torch: audits run in one spawned worker process
(``spawn``: no gRPC threads or locks are inherited), started on the first audit and kept, so
the encoder is loaded once. One worker means one audit at a time, which keeps the service's CPU
for uploads. A worker that dies (the kernel's OOM killer) fails only the audit it ran; the next
audit starts a fresh one. An audit past its timeout kills the worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from services.dataset.adapters.audit_engine import (
    AuditJob,
    ShiftJob,
    audit_rows,
    measure_parent_shift,
)
from services.dataset.domain.label_audit import DEFAULT_FOLDS, LabelAuditFindings, NotAuditable
from shared.stats.two_sample import TwoSampleResult

log = logging.getLogger(__name__)

_Job = TypeVar("_Job")
_Result = TypeVar("_Result")


class AuditFailed(Exception):
    """The audit could not run (the message says why); the audit is FAILED, not blocking."""


@dataclass(frozen=True)
class AuditorSettings:
    encoder: str
    models_root: Path
    folds: int = DEFAULT_FOLDS
    seed: int = 0
    timeout_seconds: float = 3600.0
    device: str | None = None


class ProcessLabelAuditor:
    """Runs :func:`~services.dataset.adapters.audit_engine.audit_rows` in a spawned worker."""

    def __init__(self, settings: AuditorSettings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def encoder(self) -> str:
        return self.settings.encoder

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            return self._pool

    def _discard(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()  # a stuck audit: the worker is ours, killing it is the way out
            pool.shutdown(wait=False, cancel_futures=True)

    def audit(self, texts: Sequence[str], labels: Sequence[str]) -> LabelAuditFindings:
        """Raises :class:`NotAuditable` (SKIPPED) or :class:`AuditFailed` (FAILED)."""
        job = AuditJob(
            texts=tuple(texts),
            labels=tuple(labels),
            encoder=self.settings.encoder,
            models_root=str(self.settings.models_root),
            folds=self.settings.folds,
            seed=self.settings.seed,
            device=self.settings.device,
        )
        return self._in_worker(audit_rows, job)

    def parent_shift(
        self,
        version_texts: Sequence[str],
        parent_texts: Sequence[str],
        *,
        permutations: int,
        max_rows: int,
    ) -> TwoSampleResult:
        """The two-sample test of the parent's texts against the version's, on the audit's
        encoder (:func:`~services.dataset.adapters.audit_engine.measure_parent_shift`).
        Raises :class:`AuditFailed`."""
        job = ShiftJob(
            version_texts=tuple(version_texts),
            parent_texts=tuple(parent_texts),
            encoder=self.settings.encoder,
            models_root=str(self.settings.models_root),
            permutations=permutations,
            max_rows=max_rows,
            seed=self.settings.seed,
            device=self.settings.device,
        )
        return self._in_worker(measure_parent_shift, job)

    def _in_worker(self, work: Callable[[_Job], _Result], job: _Job) -> _Result:
        """``work(job)`` in the worker; its failures as :class:`AuditFailed` (but
        :class:`NotAuditable`, which is raised as is)."""
        future = self._executor().submit(work, job)
        try:
            return future.result(timeout=self.settings.timeout_seconds)
        except NotAuditable:
            raise
        except FutureTimeout:
            self._discard()
            raise AuditFailed(
                f"the audit ran past its {self.settings.timeout_seconds:.0f} s timeout"
            ) from None
        except BrokenProcessPool:
            self._discard()
            raise AuditFailed("the audit worker died (out of memory?)") from None
        except Exception as error:  # the model's errors: reported on the audit
            log.warning("label audit failed", exc_info=True)
            raise AuditFailed(f"{type(error).__name__}: {error}") from error

    def start(self) -> None:
        """Nothing to do: the worker starts with the first audit."""

    def stop(self) -> None:
        self._discard()
