"""A full disk under the trainer, for real: the worker's artifact store on a small tmpfs.

The unit tests inject ENOSPC at one call (tests/unit/test_trainer_engine.py -k full_disk); here
the filesystem itself fills up while torch and safetensors write a checkpoint, so what is proved
is that their real errors are recognised as a full disk (``shared.artifacts.is_disk_full``), the
worker reports a resumable :class:`WorkerDiskFull`, nothing half-written stays on the disk, and
the job resumes from its last complete checkpoint once there is space again.

Needs root and a kernel that lets the test mount a tmpfs (skipped, with the reason, elsewhere).
The store's tmpfs starts roomy; once the first checkpoint is stored (the worker's report is the
signal) it is shrunk to leave half a checkpoint of room, so the second one cannot fit.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.trainer.adapters.engine.loop import run_training
from services.trainer.adapters.engine.signals import StopSignals
from services.trainer.adapters.worker import train_and_report
from services.trainer.domain.config import CheckpointPolicy
from services.trainer.domain.worker_messages import (
    WorkerCheckpoint,
    WorkerDiskFull,
    WorkerFailed,
    WorkerFinished,
    WorkerMessage,
    WorkerStarted,
)
from shared.artifacts import LocalArtifactStore
from shared.modeling import folder_sha256
from tests.fixtures.datasets import stored_artifacts
from tests.fixtures.trainer_plans import engine_workspace, make_plan

ROOMY = 64 * 1024 * 1024


def _mount(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own (``ROOMY`` bytes to begin with), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the ENOSPC path is unit-tested by injection")
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = _mount(["mount", "-t", "tmpfs", "-o", f"size={ROOMY}", "tmpfs", str(mountpoint)])
    if mounted.returncode != 0:
        pytest.skip(f"this machine does not let the test mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        _mount(["umount", "-l", str(mountpoint)])


def _resize(mountpoint: Path, size: int) -> None:
    result = _mount(["mount", "-o", f"remount,size={size}", str(mountpoint)])
    assert result.returncode == 0, result.stderr


def _used(mountpoint: Path) -> int:
    stats = os.statvfs(mountpoint)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


@pytest.mark.parametrize(
    "worker_temp_on_the_disk",
    [False, True],
    ids=["store-full", "worker-temp-and-store-full"],
)
def test_a_tmpfs_filling_up_mid_checkpoint_keeps_no_half_checkpoint_and_the_job_resumes(
    tmp_path: Path,
    small_disk: Path,
    worker_temp_on_the_disk: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``store-full``: the worker writes a checkpoint in its temp folder (elsewhere) and the copy
    into the store fails. ``worker-temp-and-store-full``: that temp folder is on the small disk
    too, so it fills the disk as well, and must be gone afterwards like the store's staging."""
    if worker_temp_on_the_disk:
        (small_disk / "tmp").mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(small_disk / "tmp"))
    chat_rows = [{"prompt": f"question {i} is", "completion": f" answer {i}"} for i in range(8)]
    workspace = engine_workspace(tmp_path / "engine", chat_rows)
    plan = dataclasses.replace(
        make_plan(
            workspace,
            checkpointing=CheckpointPolicy(every_n_steps=3),
            max_steps=9,
            prefix="jobs/tmpfs",
        ),
        artifact_root=str(small_disk),
    )
    reports: list[WorkerMessage] = []
    shrunk_to: list[int] = []

    def report(message: WorkerMessage) -> None:
        reports.append(message)
        if isinstance(message, WorkerCheckpoint) and message.step == 3:
            # the first checkpoint (adapter and state) is stored: leave room for half another
            used = _used(small_disk)
            shrunk_to.append(used + used // 2)
            _resize(small_disk, shrunk_to[0])

    train_and_report(plan, report, StopSignals())

    assert shrunk_to, "the first checkpoint was stored on the small disk"
    assert not [m for m in reports if isinstance(m, WorkerFailed)], reports
    [disk_full] = [m for m in reports if isinstance(m, WorkerDiskFull)]
    assert disk_full.message.startswith("disk full: ")
    [kept] = [m for m in reports if isinstance(m, WorkerCheckpoint)]
    assert kept.step == 3
    # nothing half-written: the step-3 checkpoint and state, whole, and nothing else
    jobs = small_disk / "jobs" / "tmpfs"
    assert sorted(p.name for p in (jobs / "checkpoints").iterdir()) == ["step-3"]
    assert sorted(p.name for p in (jobs / "states").iterdir()) == ["step-3"]
    store = LocalArtifactStore(small_disk)
    assert folder_sha256(store.local_path(kept.artifact_uri)) == kept.sha256
    kept_folders = (jobs / "checkpoints" / "step-3", jobs / "states" / "step-3")
    stray = [
        f
        for f in stored_artifacts(small_disk)
        if not any(f.is_relative_to(folder) for folder in kept_folders)
    ]
    assert stray == [], "no partial file, staging folder or worker temp file is left"

    # space is back: the job resumes from its last complete checkpoint and finishes
    _resize(small_disk, ROOMY)
    resumed: list[WorkerMessage] = []
    run_training(
        dataclasses.replace(plan, resume_state_uri=kept.state_uri), resumed.append, StopSignals()
    )
    [started] = [m for m in resumed if isinstance(m, WorkerStarted)]
    assert started.step == 3
    assert [m.step for m in resumed if isinstance(m, WorkerCheckpoint)] == [6, 9]
    assert [m for m in resumed if isinstance(m, WorkerFinished)]
