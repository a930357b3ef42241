"""Where and how a job's ranks run: device slots, data-parallel or fully sharded, on the
trainer's node or in Kubernetes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class LauncherKind(StrEnum):
    """Where a job's ranks run: ``torchrun`` on the trainer's node, or pods in Kubernetes."""

    LOCAL = "local"
    KUBERNETES = "kubernetes"


class KubernetesWorkload(StrEnum):
    """What the Kubernetes launcher submits: an Indexed Job with a headless Service (plain
    Kubernetes), or a Kubeflow Trainer ``TrainJob`` on its torch-distributed runtime."""

    INDEXED_JOB = "indexed_job"
    TRAIN_JOB = "train_job"


class LaunchPhase(StrEnum):
    """A launch's state as the job sees it, from its Kubernetes job and pods."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class KubernetesLaunch:
    """How the Kubernetes launcher runs a job's ranks (the ``TUNELINE_TRAINER_KUBERNETES_*``
    settings): ``nodes`` pods, each a ``torchrun`` of ``world_size / nodes`` ranks."""

    namespace: str
    image: str
    workload: KubernetesWorkload = KubernetesWorkload.INDEXED_JOB
    nodes: int = 1
    #: Kueue ``LocalQueue`` the launch is submitted to (admitted whole: gang scheduling);
    #: empty: no Kueue, the pods are scheduled as they come.
    queue: str = ""
    service_account: str = ""
    #: The PersistentVolumeClaim with the trainer's data folder, mounted at ``data_mount``
    #: (where the plan's model, split and artifact paths point); empty: none.
    data_claim: str = ""
    data_mount: str = ""
    #: The address the pods reach the trainer's relay at, and its port (0: any free one).
    relay_host: str = ""
    relay_port: int = 0
    #: Kubeflow Trainer's runtime a ``TrainJob`` refers to.
    runtime: str = "torch-distributed"


class Sharding(StrEnum):
    """How a job's ranks hold the base model: whole on each (data-parallel), or its frozen
    weights split across them (fully sharded, for a model one device cannot hold)."""

    DATA_PARALLEL = "data_parallel"
    FULLY_SHARDED = "fully_sharded"


def device_slots(devices: Sequence[str], ranks_per_job: int) -> list[str]:
    """The slots jobs run in, one job per slot. One device each; for data-parallel jobs of
    ``ranks_per_job`` ranks, that many CUDA devices per slot (``cuda:0,cuda:1``; devices left
    over run nothing), while the CPU stays one slot its ranks share."""
    if ranks_per_job <= 1:
        return list(devices)
    cuda = [device for device in devices if device.startswith("cuda")]
    slots = [
        ",".join(cuda[start : start + ranks_per_job])
        for start in range(0, len(cuda) - ranks_per_job + 1, ranks_per_job)
    ]
    return slots + [device for device in devices if not device.startswith("cuda")]


def devices_in(slot: str) -> int:
    """How many devices a job's device slot holds: ``cuda:0`` one, ``cuda:0,cuda:1`` two (a
    data-parallel job's ranks, one per device); ``cpu`` one, however many processes share it."""
    return max(1, sum(1 for device in slot.split(",") if device.strip()))
