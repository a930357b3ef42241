"""Worker processes for the per-row validation rules.

Per-row validation is CPU-bound Python; threads would share one interpreter lock, so blocks of
rows go to a small pool of processes instead
(``services.dataset.domain.rows.check_block`` is pure and picklable). Processes are *spawned*,
never forked: forking a process that runs gRPC's threads is unsafe. The pool starts on first
use, is shared by concurrent uploads, and is replaced if a worker dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import Executor, ProcessPoolExecutor

log = logging.getLogger(__name__)


class ValidationWorkers:
    """A lazily started, self-healing process pool; ``count=0`` validates in the caller."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> Executor | None:
        """The pool to submit blocks to, or ``None`` to validate in the calling thread."""
        if self.count == 0:
            return None
        with self._lock:
            if self._pool is None or _is_broken(self._pool):
                if self._pool is not None:
                    log.warning("a validation worker died; starting a new pool")
                    self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = ProcessPoolExecutor(
                    self.count, mp_context=multiprocessing.get_context("spawn")
                )
            return self._pool

    def start(self) -> None:
        """Nothing to do: the pool starts with the first upload."""

    def stop(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


def _is_broken(pool: ProcessPoolExecutor) -> bool:
    # ProcessPoolExecutor marks itself broken when a worker dies; it has no public accessor
    return bool(getattr(pool, "_broken", False))
