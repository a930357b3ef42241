"""The supervisor: runs queued evaluations, one at a time, in the worker process.

A background component of the service (``ServiceSpec.background``). Its thread claims the
oldest runnable queued evaluation, runs it through
:func:`services.evaluator.handlers.running.run_evaluation` (registry, stored baselines, the
worker, the gate, the result and its events committed together), and looks again. Evaluations
a stopped replica left RUNNING go back to the queue (at start, and now and then when idle);
those a live replica still runs are claimed (``shared.running_claims``) and left alone. One
that is running when the service stops goes back too, and runs again next time.
"""

from __future__ import annotations

import logging
import threading

from services.evaluator.adapters.worker import EvaluationWorker, WorkerStopped
from services.evaluator.domain.evaluation import FailureReason
from services.evaluator.handlers.deps import EvaluatorDeps
from services.evaluator.handlers.running import (
    claim_next,
    fail_evaluation,
    release_claim,
    requeue_interrupted,
    return_to_queue,
    run_evaluation,
)

log = logging.getLogger(__name__)

#: Idle polls between looks for evaluations a stopped replica left RUNNING (about 30 s at the
#: default half-second poll): cheap, and a dead replica's work waits at most that long.
ORPHAN_CHECK_EVERY_IDLE_PASSES = 60


class EvaluationSupervisor:
    """Claims and runs queued evaluations on a background thread."""

    def __init__(
        self,
        deps: EvaluatorDeps,
        worker: EvaluationWorker,
        *,
        poll_seconds: float = 0.5,
        prestart_worker: bool = True,
    ) -> None:
        self._deps = deps
        self._worker = worker
        self._poll_seconds = poll_seconds
        self._prestart_worker = prestart_worker
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle_passes = 0

    def start(self) -> None:
        requeued = requeue_interrupted(self._deps)
        if requeued:
            log.info("interrupted evaluations queued again", extra={"count": requeued})
        if self._prestart_worker:
            self._worker.start()
        self._thread = threading.Thread(target=self._run, name="evaluation-supervisor", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for queued evaluations now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._worker.stop()
        if self._thread:
            self._thread.join(30)

    def run_once(self) -> bool:
        """Claim and run one evaluation; False when none was runnable."""
        evaluation = claim_next(self._deps)
        if evaluation is None:
            return False
        try:
            run_evaluation(self._deps, evaluation)
        except WorkerStopped:
            return_to_queue(self._deps, evaluation)
        except Exception as error:
            log.exception("evaluation crashed", extra={"evaluation": evaluation.name})
            fail_evaluation(
                self._deps, evaluation, FailureReason.INTERNAL, f"{type(error).__name__}: {error}"
            )
        finally:
            release_claim(self._deps, evaluation)
        return True

    def requeue_orphans(self) -> None:
        """Another replica may have died mid-evaluation since start-up: with claims that can
        tell (PostgreSQL), look now and then, not only when this replica starts."""
        if not self._deps.claims.enabled:
            return  # one replica (SQLite): its own start-up already re-queued everything
        requeued = requeue_interrupted(self._deps)
        if requeued:
            log.info("evaluations of a stopped replica queued again", extra={"count": requeued})

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("supervisor pass failed")
                busy = False
            if not busy:
                self._idle_passes += 1
                if self._idle_passes % ORPHAN_CHECK_EVERY_IDLE_PASSES == 0:
                    try:
                        self.requeue_orphans()
                    except Exception:
                        log.exception("looking for evaluations of stopped replicas failed")
                self._wake.wait(self._poll_seconds)
                self._wake.clear()
