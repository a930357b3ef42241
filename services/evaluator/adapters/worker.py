"""The worker process that runs the evaluation engine, one scoring job at a time.

The service process never imports torch: it spawns one worker (``spawn``, so no CUDA or lock
state is inherited from a threaded parent) that imports the engine once and then scores jobs
sent over a pipe (and, asked, says which device, dtype and library versions it scores
under). One worker means one evaluation at a time on the device. The worker stays up
between jobs (importing torch and transformers costs seconds), and a worker that dies — a
segfault, the kernel's OOM killer — fails only the job it was running; the next job spawns a
fresh one. A job past its timeout, or a service that is stopping, kills the worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from services.evaluator.adapters.scoring import (
    ConditionsRequest,
    ScoringFailed,
    ScoringJob,
    ScoringResult,
)
from services.evaluator.domain.evaluation import FailureReason, ScoringConditions

log = logging.getLogger(__name__)

_SIGKILL_EXIT = -9


class WorkerStopped(Exception):
    """The worker was stopped (the service is shutting down) while a job ran."""


def _worker_main(connection: Connection) -> None:
    """The worker's loop: import the engine once, then score jobs until told to stop."""
    # torch is imported here, in the worker; the service process never imports it
    from services.evaluator.adapters import engine  # noqa: PLC0415

    connection.send(("ready", None))
    while True:
        try:
            job = connection.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            if isinstance(job, ConditionsRequest):
                connection.send(("ok", engine.scoring_conditions(job.device)))
                continue
            result = engine.score(job)
        except ScoringFailed as failure:
            connection.send(("failed", (failure.reason.value, failure.message)))
        except Exception:  # noqa: BLE001 - reported to the parent, which fails the evaluation
            connection.send(("error", traceback.format_exc(limit=20)))
        else:
            connection.send(("ok", result))


class EvaluationWorker:
    """Runs :class:`ScoringJob` s in a spawned worker process (see the module doc)."""

    def __init__(self, *, poll_seconds: float = 0.2) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.is_alive() else None

    def start(self) -> None:
        """Spawn the worker now, so the first evaluation does not wait for torch to import."""
        with self._lock:
            self._ensure_process()

    def _ensure_process(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child,), name="tuneline-evaluator-worker", daemon=True
        )
        process.start()
        child.close()
        self._process, self._connection = process, parent
        log.info("evaluation worker started", extra={"pid": process.pid})

    def _discard_process(self) -> None:
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if connection is not None:
            connection.close()
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(10)

    def run(self, job: ScoringJob, *, timeout: float) -> ScoringResult:
        """Score ``job`` in the worker; raises :class:`ScoringFailed` or :class:`WorkerStopped`."""
        result: ScoringResult = self._exchange(job, timeout=timeout)
        return result

    def conditions(self, device: str | None, *, timeout: float) -> ScoringConditions:
        """The conditions the worker scores under on ``device`` (asked of the worker itself:
        the service process does not import torch)."""
        answer: ScoringConditions = self._exchange(ConditionsRequest(device), timeout=timeout)
        return answer

    def _exchange(self, request: ScoringJob | ConditionsRequest, *, timeout: float) -> Any:
        """Send ``request`` to the worker and wait for its answer (see :meth:`run`)."""
        with self._lock:
            if self._stopping.is_set():
                raise WorkerStopped("the evaluation worker is stopping")
            self._ensure_process()
            assert self._connection is not None
            assert self._process is not None
            connection, process = self._connection, self._process
            connection.send(request)
            deadline = time.monotonic() + timeout
            while True:
                if self._stopping.is_set():
                    self._discard_process()
                    raise WorkerStopped("the evaluation worker was stopped during a job")
                if time.monotonic() > deadline:
                    self._discard_process()
                    raise ScoringFailed(
                        FailureReason.INTERNAL, f"the evaluation ran past its {timeout:.0f} s limit"
                    )
                try:
                    ready = connection.poll(self._poll_seconds)
                    message: tuple[str, Any] | None = connection.recv() if ready else None
                except (EOFError, OSError):
                    message = None
                    ready = True  # the pipe broke: the worker is gone
                if message is None:
                    if ready or not process.is_alive():
                        process.join(5)
                        exit_code = process.exitcode
                        self._discard_process()
                        reason = (
                            FailureReason.OUT_OF_MEMORY
                            if exit_code == _SIGKILL_EXIT
                            else FailureReason.INTERNAL
                        )
                        raise ScoringFailed(
                            reason, f"the evaluation worker died (exit code {exit_code})"
                        )
                    continue
                kind, payload = message
                if kind == "ready":
                    continue
                if kind == "ok":
                    return payload
                if kind == "failed":
                    reason_value, text = payload
                    raise ScoringFailed(FailureReason(reason_value), text)
                raise ScoringFailed(FailureReason.INTERNAL, f"the engine raised:\n{payload}")

    def stop(self) -> None:
        """Stop the worker: a running job is abandoned (its evaluation runs again later)."""
        self._stopping.set()
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._connection.send(None)
            if self._process is not None:
                self._process.join(5)
            self._discard_process()
