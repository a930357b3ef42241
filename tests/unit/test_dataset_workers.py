"""ValidationWorkers: a spawned process pool that starts on first use and heals itself."""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool

import pytest

from services.dataset.adapters.workers import ValidationWorkers


def test_no_workers_means_validating_in_the_calling_thread() -> None:
    assert ValidationWorkers(0).executor() is None


def test_a_dead_worker_is_replaced_by_a_new_pool() -> None:
    workers = ValidationWorkers(1)
    try:
        pool = workers.executor()
        assert pool is not None
        worker_pid = pool.submit(os.getpid).result(timeout=60)
        assert worker_pid != os.getpid()
        doomed = pool.submit(os.kill, worker_pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            doomed.result(timeout=60)
        healed = workers.executor()
        assert healed is not pool
        assert healed is not None
        assert healed.submit(os.getpid).result(timeout=60) not in (worker_pid, os.getpid())
    finally:
        workers.stop()
    assert workers._pool is None
