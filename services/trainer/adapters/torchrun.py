"""A data-parallel job on ``torchrun``: the worker launches the ranks and relays for rank 0.

PyTorch's own launcher (``python -m torch.distributed.run``, i.e. ``torchrun``) starts the
ranks, gives them the rendezvous and tears the whole launch down when one rank dies; this
module only connects it to the trainer's worker protocol:

* the worker (:func:`run_ranks`) listens on a Unix socket in a private temporary folder,
  with a random authentication key passed in the ranks' environment, and starts ``torchrun``;
* rank 0 (:func:`rank_main`) connects back and speaks the worker protocol over that one
  connection: messages out, control commands in (the other ranks report nothing; rank 0's
  decisions reach them through the collectives, see ``engine.distributed``);
* the worker relays both ways. When the service goes away (the control pipe ends) it tells
  rank 0 to abandon the run (stop, write nothing) and, if the launch has not ended after a
  grace period, kills its process group. A
  launch that ends without a finishing message is a crashed attempt, as for a single worker:
  the supervisor resumes the job from its last checkpoint, on any number of ranks.

:class:`LocalTorchrun` is the local :class:`Launcher`; the Kubernetes one
(:mod:`.kubernetes_launch`) runs the same rank module in pods and relays through the same code,
rank 0 connecting over TCP (``host:port``) instead of the Unix socket.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import suppress
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Protocol

from services.trainer.adapters.engine.signals import StopSignals
from services.trainer.adapters.worker import ABANDON, HALT, train_and_report, train_over
from services.trainer.domain.launch import Sharding
from services.trainer.domain.worker_messages import WorkerPlan
from shared.logging import configure_logging

log = logging.getLogger(__name__)

#: The environment variable carrying the relay socket's key (hex) to rank 0: set by the
#: worker for its own launch, not a setting (so not named like one).
AUTHKEY_ENV = "RANK_RELAY_AUTHKEY"
#: After a halt, how long the ranks get to stop before their process group is killed.
HALT_GRACE_SECONDS = 30.0
#: How often the worker looks whether the launch ended before rank 0 connected.
_ACCEPT_POLL_SECONDS = 0.2


def torchrun_command(plan_file: Path, address: str, world_size: int) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m <this module> PLAN ADDRESS``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={world_size}",
        "-m",
        __name__,
        str(plan_file),
        address,
    ]


class RunningLaunch(Protocol):
    """A launch of ranks as the relay sees it: local ``torchrun``, or a Kubernetes job."""

    def ended(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> None:
        """Until the launch ended, or ``timeout`` seconds (then it may still run)."""

    def kill(self) -> None:
        """End every rank now (no-op once ended)."""


class LocalLaunch:
    """``torchrun`` on this node, in its own process group."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    def ended(self) -> bool:
        return self.process.poll() is not None

    def wait(self, timeout: float | None = None) -> None:
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)

    def kill(self) -> None:
        _kill(self.process)


class Launcher(Protocol):
    """Runs a plan's ranks somewhere and relays for rank 0 until they ended (the worker's
    side of the protocol: ``messages`` out, ``control`` in)."""

    def run(self, plan: WorkerPlan, messages: Connection, control: Connection) -> None: ...


class LocalTorchrun:
    """The local launcher: the ranks as ``torchrun`` processes on the trainer's node."""

    def run(self, plan: WorkerPlan, messages: Connection, control: Connection) -> None:
        run_ranks(plan, messages, control)


def relay_address(address: str) -> tuple[str, str | tuple[str, int]]:
    """(socket family, address) of rank 0's relay: a Unix socket path on this node, or
    ``host:port`` over TCP (ranks in pods elsewhere)."""
    host, colon, port = address.rpartition(":")
    if colon and "/" not in address and port.isdigit():
        return "AF_INET", (host, int(port))
    return "AF_UNIX", address


def run_ranks(plan: WorkerPlan, messages: Connection, control: Connection) -> None:
    """Launch the plan's ranks under ``torchrun`` and relay for rank 0 until the launch ends."""
    with tempfile.TemporaryDirectory(prefix="tuneline-ranks-") as folder:
        plan_file = Path(folder) / "plan.json"
        plan_file.write_text(json.dumps(plan.to_json()))
        address = str(Path(folder) / "rank0.sock")
        authkey = secrets.token_bytes(32)
        with Listener(address, family="AF_UNIX", authkey=authkey) as listener:
            launch = subprocess.Popen(
                torchrun_command(plan_file, address, plan.world_size),
                env={**os.environ, AUTHKEY_ENV: authkey.hex(), "PYTHONPATH": _python_path()},
                start_new_session=True,  # one process group: the ranks die with the launch
            )
            try:
                relay_rank0(listener, messages, control, LocalLaunch(launch))
                launch.wait()
            finally:
                _kill(launch)
        if launch.returncode:
            log.warning(
                "the ranks' launch ended with an error",
                extra={"job": plan.job, "returncode": launch.returncode},
            )


def _python_path() -> str:
    """The ranks import this project whatever folder the service runs in."""
    root = str(Path(__file__).resolve().parents[3])
    inherited = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(part for part in (root, inherited) if part)


def relay_rank0(
    listener: Listener, messages: Connection, control: Connection, launch: RunningLaunch
) -> None:
    """Wait for rank 0 to connect (or the launch to end first), then relay for it."""
    rank0 = _accept(listener, launch)
    if rank0 is not None:
        _relay(rank0, messages, control, launch)


def _accept(listener: Listener, launch: RunningLaunch) -> Connection | None:
    """Rank 0's connection; None when the launch ended before it connected."""
    accepted: list[Connection] = []
    done = threading.Event()

    def accept() -> None:
        with suppress(OSError, EOFError):
            accepted.append(listener.accept())
        done.set()

    threading.Thread(target=accept, name="ranks-accept", daemon=True).start()
    while not done.wait(_ACCEPT_POLL_SECONDS):
        if launch.ended():
            return None
    return accepted[0] if accepted else None


def _relay(
    rank0: Connection, messages: Connection, control: Connection, launch: RunningLaunch
) -> None:
    """Rank 0's messages to the supervisor, the supervisor's commands to rank 0."""

    def commands() -> None:
        while True:
            try:
                command = control.recv()
            except (EOFError, OSError):
                command = ABANDON  # the service is gone: the ranks must not train on
            with suppress(OSError):
                rank0.send(command)
            if command in (HALT, ABANDON):
                launch.wait(HALT_GRACE_SECONDS)
                launch.kill()
                return

    threading.Thread(target=commands, name="ranks-control", daemon=True).start()
    with rank0:
        while True:
            try:
                message = rank0.recv()
            except (EOFError, OSError):
                return
            messages.send(message)


def _kill(launch: subprocess.Popen[bytes]) -> None:
    if launch.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(launch.pid, signal.SIGKILL)
        launch.wait()


def rank_main(plan_file: str, address: str) -> None:
    """One rank, as ``torchrun`` starts it: join the group, train, rank 0 reporting."""
    plan = WorkerPlan.from_json(json.loads(Path(plan_file).read_text()))
    configure_logging("trainer-rank", os.environ.get("TUNELINE_LOG_LEVEL", "INFO"))
    from services.trainer.adapters.engine.distributed import (  # noqa: PLC0415 - torch
        DataParallelGroup,
    )

    group = DataParallelGroup.from_environment(
        plan.device.split(":", 1)[0], fully_sharded=plan.sharding is Sharding.FULLY_SHARDED
    )
    try:
        if not group.is_main:  # rank 0 reports for all; the others hear it in the collectives
            train_and_report(plan, lambda _message: None, StopSignals(), group)
            return
        authkey = bytes.fromhex(os.environ[AUTHKEY_ENV])
        family, relay = relay_address(address)
        with Client(relay, family=family, authkey=authkey) as connection:
            train_over(plan, connection, connection, group)
    finally:
        group.close()


if __name__ == "__main__":
    rank_main(sys.argv[1], sys.argv[2])
