"""Worker processes: each training job runs in one, never on an RPC thread.

The supervisor starts a worker with :func:`start_worker`. Workers are forked from a
*forkserver* that has already imported torch, transformers and peft (:func:`warm_up`), so a
job starts in well under a second instead of re-importing them; the service process itself
never imports torch. A worker talks to the supervisor through two one-way pipes:

* messages, worker → supervisor: :mod:`services.trainer.domain.worker_messages` messages as
  dicts, in order;
* control, supervisor → worker: ``"cancel"`` (stop, write a final checkpoint, report) or
  ``"halt"`` (the service is shutting down: stop at the next step boundary, write a checkpoint
  of the steps since the last one, and end; the job resumes there). End-of-file on the control
  pipe means the service died: the worker stops at once and writes nothing (nobody would record
  it), so a SIGKILLed service never leaves training running behind it.

A worker that exits without a ``finished`` or ``failed`` message crashed; the supervisor
resumes the job from its last checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Protocol

from services.trainer.adapters.engine.signals import StopSignals, TrainingFailure
from services.trainer.domain.jobs import FailureReason
from services.trainer.domain.worker_messages import (
    WorkerDiskFull,
    WorkerFailed,
    WorkerMessage,
    WorkerPlan,
    encode_message,
)
from shared.artifacts import is_disk_full
from shared.logging import configure_logging

if TYPE_CHECKING:
    from services.trainer.adapters.engine.distributed import DataParallelGroup
    from services.trainer.adapters.torchrun import Launcher

log = logging.getLogger(__name__)

#: Imported once in the forkserver, inherited by every worker it forks.
PRELOAD = ["services.trainer.adapters.engine.loop"]

CANCEL = "cancel"
HALT = "halt"
#: Not sent by the supervisor: what the torchrun relay tells rank 0 when the service is gone.
ABANDON = "abandon"
#: The job's cost reached its per-run budget: stop after the current step, with a checkpoint.
BUDGET_EXHAUSTED = "budget_exhausted"


def worker_context() -> ForkServerContext:
    """The multiprocessing context workers start from (forkserver, torch preloaded)."""
    context = multiprocessing.get_context("forkserver")
    assert isinstance(context, ForkServerContext)
    context.set_forkserver_preload(PRELOAD)
    return context


def warm_up() -> None:
    """Start the forkserver now (it imports torch: seconds), so the first job starts fast."""
    worker_context()
    multiprocessing.forkserver.ensure_running()


@dataclass
class WorkerHandle:
    """A running worker as the supervisor holds it."""

    process: BaseProcess
    messages: Connection
    control: Connection

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def send(self, command: str) -> None:
        """Send a control command; a worker already gone is not an error."""
        with suppress(OSError):
            self.control.send(command)

    def close(self) -> None:
        for connection in (self.messages, self.control):
            connection.close()


def start_worker(plan: WorkerPlan, *, log_level: str = "INFO") -> WorkerHandle:
    """Fork a worker for ``plan``; returns at once."""
    context = worker_context()
    messages_reader, messages_writer = context.Pipe(duplex=False)
    control_reader, control_writer = context.Pipe(duplex=False)
    process = context.Process(
        target=worker_main,
        args=(plan.to_json(), messages_writer, control_reader, log_level),
        name=f"trainer-worker-{plan.job.rsplit('/', 1)[-1]}",
        daemon=False,
    )
    process.start()
    # the worker holds these ends now; closing ours lets each side see the other's death
    messages_writer.close()
    control_reader.close()
    return WorkerHandle(process, messages_reader, control_writer)


def probe_devices(stop: threading.Event, timeout: float = 300.0) -> list[str] | None:
    """The devices jobs can run on: ``cuda:0`` … when CUDA is present, else ``["cpu"]``;
    None when ``stop`` was set first.

    Asked of a forked worker, so the service process never initialises CUDA or imports torch.
    """
    context = worker_context()
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_probe_main, args=(writer,), name="trainer-device-probe")
    process.start()
    writer.close()
    deadline = time.monotonic() + timeout
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            if reader.poll(0.2):
                devices: list[str] = reader.recv()
                return devices
    except EOFError:
        pass
    finally:
        reader.close()
        process.join(1)
        if process.is_alive():
            process.kill()
    if stop.is_set():
        return None
    log.warning("device probe failed; using the CPU")
    return ["cpu"]


class WorkerLauncher(Protocol):
    """How the supervisor gets workers: :class:`ForkedWorkers` in the service; tests that are
    about scheduling, not training, give it workers that need no torch."""

    def warm_up(self) -> None: ...

    def start(self, plan: WorkerPlan, *, log_level: str) -> WorkerHandle: ...

    def probe_devices(self, stop: threading.Event) -> list[str] | None: ...


class ForkedWorkers:
    """Workers forked from the torch-preloaded forkserver (see the module docstring)."""

    def warm_up(self) -> None:
        warm_up()

    def start(self, plan: WorkerPlan, *, log_level: str) -> WorkerHandle:
        return start_worker(plan, log_level=log_level)

    def probe_devices(self, stop: threading.Event) -> list[str] | None:
        return probe_devices(stop)


def _probe_main(writer: Connection) -> None:
    import torch  # noqa: PLC0415 - only worker processes import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    writer.send([f"cuda:{index}" for index in range(count)] or ["cpu"])
    writer.close()


def worker_main(
    plan_json: dict[str, Any], messages: Connection, control: Connection, log_level: str
) -> None:
    """The worker process: train the plan (here, or as the ranks of a data-parallel launch),
    report, exit."""
    plan = WorkerPlan.from_json(plan_json)
    configure_logging("trainer-worker", log_level)
    try:
        launcher = launcher_for(plan)
        if launcher is not None:
            launcher.run(plan, messages, control)
            return
        train_over(plan, messages, control)
    finally:
        messages.close()


def launcher_for(plan: WorkerPlan) -> Launcher | None:
    """Who runs the plan's ranks: Kubernetes when the plan says so, ``torchrun`` on this node
    for several ranks, None for one process (this worker trains itself)."""
    # imported here: those modules import this one for the rank side
    if plan.kubernetes is not None:
        from services.trainer.adapters.kubernetes_launch import (  # noqa: PLC0415
            KubernetesLauncher,
        )

        return KubernetesLauncher()
    if plan.world_size > 1:
        from services.trainer.adapters.torchrun import LocalTorchrun  # noqa: PLC0415

        return LocalTorchrun()
    return None


def train_over(
    plan: WorkerPlan,
    messages: Connection,
    control: Connection,
    group: DataParallelGroup | None = None,
) -> None:
    """Train ``plan`` speaking the worker protocol: messages sent on ``messages`` in order,
    commands heard on ``control`` (the supervisor's pipes, or rank 0's relay connection)."""
    signals = StopSignals()
    send_lock = threading.Lock()

    def report(message: WorkerMessage) -> None:
        with send_lock:
            messages.send(encode_message(message))

    threading.Thread(
        target=listen_for_control, args=(control, signals), name="worker-control", daemon=True
    ).start()
    train_and_report(plan, report, signals, group)


def listen_for_control(control: Connection, signals: StopSignals) -> None:
    """Turn the supervisor's commands into ``signals`` until a halt or the channel's end."""
    while True:
        try:
            command = control.recv()
        except (EOFError, OSError):
            signals.abandoned = True  # the service is gone
            return
        if command == CANCEL:
            signals.cancel = True
        elif command == BUDGET_EXHAUSTED:
            signals.budget_exhausted = True
        elif command == HALT:
            signals.halt = True
            return
        elif command == ABANDON:
            signals.abandoned = True
            return


def train_and_report(
    plan: WorkerPlan,
    report: Callable[[WorkerMessage], None],
    signals: StopSignals,
    group: DataParallelGroup | None = None,
) -> None:
    """Train, and report how it ended: a halt ends silently (the job resumes later); a
    contract failure with its reason; a full disk as :class:`WorkerDiskFull` (the job resumes
    when space may be back); anything else as INTERNAL with its type."""
    # imported here, in the worker: the forkserver preloaded it, the service never does
    from services.trainer.adapters.engine.distributed import (  # noqa: PLC0415 - torch stays out of the service
        SOLO,
    )
    from services.trainer.adapters.engine.loop import (  # noqa: PLC0415 - torch stays out of the service
        TrainingHalted,
        run_training,
    )

    try:
        run_training(plan, report, signals, group or SOLO)
    except TrainingHalted:
        log.info("worker halted", extra={"job": plan.job})
    except TrainingFailure as failure:
        report(WorkerFailed(reason=failure.reason, message=failure.message))
    except Exception as error:  # anything unexpected is INTERNAL, with its type
        if is_disk_full(error):  # resumable: the store's writes are atomic, none is half-done
            log.warning("disk full; the job resumes later", extra={"job": plan.job})
            report(WorkerDiskFull(message=f"disk full: {error}"))
            return
        log.exception("training failed", extra={"job": plan.job})
        report(
            WorkerFailed(reason=FailureReason.INTERNAL, message=f"{type(error).__name__}: {error}")
        )
