"""Settings of the trainer service (prefix ``TUNELINE_TRAINER_``)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import ClassVar, Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.trainer.domain.launch import (
    KubernetesLaunch,
    KubernetesWorkload,
    LauncherKind,
    Sharding,
)
from shared.modeling import default_models_root
from shared.service_ports import DEFAULT_PORTS, default_target
from shared.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    """Ports, database, artifact root, models, devices and prices of the trainer service."""

    service_name: ClassVar[str] = "trainer"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_TRAINER_", extra="ignore", frozen=True)

    grpc_port: int = DEFAULT_PORTS["trainer"].grpc
    metrics_port: int = DEFAULT_PORTS["trainer"].metrics
    watch_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description=(
            "How often the trainer checks the database for job changes committed by another "
            "replica while WatchTrainingJob streams are open (one query per interval for all "
            "streams; idle streams block until woken)."
        ),
    )
    models_root: Path = Field(
        default_factory=default_models_root,
        description="Base models named by `model_name` live here (`tuneline models prepare`).",
    )
    allowed_model_roots: list[Path] = Field(
        default_factory=list,
        description="Extra folders a job's `model_path` may point into (JSON list of paths).",
    )
    devices: str = Field(
        default="auto",
        description="Devices jobs run on, one job per device: `auto` (every CUDA device, else "
        "the CPU) or a comma-separated list such as `cuda:0,cuda:1` or `cpu`.",
    )
    cpu_threads: int = Field(
        default=0,
        ge=0,
        description="Torch threads of a worker training on the CPU (0: torch's default).",
    )
    micro_batch_tokens: int = Field(
        default=16384,
        ge=0,
        description="Packed (padding-free) causal-LM micro-batches hold up to this many tokens, "
        "no example split, accumulated to the step's examples: steady shapes and predictable "
        "memory. 0: micro-batches of `batch_size` examples. Padded batches always count examples.",
    )
    compile: bool | None = Field(
        default=None,
        description="`torch.compile` each decoder layer of the model being trained (dynamic token "
        "dimension; the output head and the loss stay eager). Unset: on for CUDA, off on the CPU, "
        "where compiling takes longer than short jobs gain and needs a C++ compiler. A failed "
        "compile falls back to eager with a warning and a metric.",
    )
    ranks_per_job: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Data-parallel ranks each job trains with, launched by `torchrun` on this "
        "node: one CUDA device per rank (jobs take that many devices each), or gloo processes "
        "sharing the CPU. 1: one process per job.",
    )
    sharding: Sharding = Field(
        default=Sharding.DATA_PARALLEL,
        description="How a job's ranks (`ranks_per_job` > 1) hold the base model: "
        "`data_parallel` (whole on each rank) or `fully_sharded` (its frozen weights split "
        "across the ranks with FSDP2, one unit per decoder layer, for a model one device "
        "cannot hold; the adapter stays whole on each rank).",
    )
    launcher: LauncherKind = Field(
        default=LauncherKind.LOCAL,
        description="Where jobs' ranks run: `local` (this node: one process, or `torchrun` for "
        "`ranks_per_job` > 1) or `kubernetes` (pods submitted through the Kubernetes API, see "
        "the `kubernetes_*` settings; the trainer's service account needs "
        "deploy/k8s/base/trainer-launcher-rbac.yaml).",
    )
    kubernetes_workload: KubernetesWorkload = Field(
        default=KubernetesWorkload.INDEXED_JOB,
        description="What the Kubernetes launcher submits: `indexed_job` (a batch/v1 Indexed "
        "Job and a headless Service) or `train_job` (a Kubeflow Trainer TrainJob).",
    )
    kubernetes_namespace: str = Field(
        default="tuneline", description="Namespace the Kubernetes launcher submits to."
    )
    kubernetes_image: str = Field(
        default="tuneline/trainer:latest",
        description="Image of the rank pods (the trainer's image: it has the engine).",
    )
    kubernetes_nodes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Pods (nodes) a Kubernetes launch spreads `ranks_per_job` over; each runs "
        "`ranks_per_job / kubernetes_nodes` ranks.",
    )
    kubernetes_queue: str = Field(
        default="",
        description="Kueue LocalQueue of Kubernetes launches (label `kueue.x-k8s.io/queue-name`, "
        "submitted suspended: admitted whole, gang scheduling); empty: no Kueue.",
    )
    kubernetes_service_account: str = Field(
        default="", description="Service account of the rank pods (empty: the namespace's)."
    )
    kubernetes_data_claim: str = Field(
        default="",
        description="PersistentVolumeClaim the rank pods mount at `kubernetes_data_mount`: the "
        "trainer's data folder, where plans' model and split paths point (empty: none).",
    )
    kubernetes_data_mount: str = Field(
        default="/var/lib/tuneline", description="Where the rank pods mount the data claim."
    )
    kubernetes_relay_host: str = Field(
        default="",
        description="Address rank 0's pod reaches the trainer at, to report (empty: this "
        "pod's IP).",
    )
    kubernetes_relay_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of that relay (0: a free one per launch).",
    )
    price_per_device_hour: Decimal = Field(
        default=Decimal("2.50"),
        ge=0,
        description="Price of one device-hour, for the cost of runs.",
    )
    currency: str = Field(
        default="USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code of the price."
    )
    estimate_tokens_per_device_second: float = Field(
        default=100.0,
        gt=0,
        description="Throughput a job estimate (`jobs create --dry-run`) assumes when no earlier "
        "run of the base model measured one; deliberately low, so a first estimate errs high.",
    )
    estimate_overhead_device_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Fixed device time per run (starting the worker, loading the model and "
        "data) a job estimate assumes when no earlier run of the base model measured it.",
    )
    wait_for_dataset_audit: bool = Field(
        default=True,
        description="Training policies make a split's jobs only after its dataset version's "
        "DatasetAudited (a BLOCKED version is never trained); false makes them on SplitCreated.",
    )
    max_worker_restarts: int = Field(
        default=3,
        ge=0,
        description="Resumes after worker crashes before a job fails with WORKER_CRASHED.",
    )
    cancel_grace_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Time a cancelled worker gets to write its final checkpoint before it is "
        "killed.",
    )
    splitter_target: str = Field(
        default=default_target("splitter"),
        description="The splitter, asked (with a deadline) about splits no SplitCreated has "
        "announced to the trainer yet.",
    )
    splitter_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Deadline of a call to the splitter."
    )
    registry_target: str = Field(
        default=default_target("registry"),
        description="The registry, asked (with a deadline) whether a job's or policy's target "
        "model exists before the job or policy is accepted.",
    )
    registry_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Deadline of a call to the registry."
    )

    @model_validator(mode="after")
    def _ranks_split_over_nodes(self) -> Self:
        if self.launcher is LauncherKind.KUBERNETES and self.ranks_per_job % self.kubernetes_nodes:
            raise ValueError(
                f"ranks_per_job ({self.ranks_per_job}) must be a multiple of kubernetes_nodes "
                f"({self.kubernetes_nodes}): each pod runs as many ranks"
            )
        return self

    def kubernetes_launch(self) -> KubernetesLaunch | None:
        """How jobs launch in Kubernetes; None when they run on this node."""
        if self.launcher is not LauncherKind.KUBERNETES:
            return None
        return KubernetesLaunch(
            namespace=self.kubernetes_namespace,
            image=self.kubernetes_image,
            workload=self.kubernetes_workload,
            nodes=self.kubernetes_nodes,
            queue=self.kubernetes_queue,
            service_account=self.kubernetes_service_account,
            data_claim=self.kubernetes_data_claim,
            data_mount=self.kubernetes_data_mount,
            relay_host=self.kubernetes_relay_host,
            relay_port=self.kubernetes_relay_port,
        )

    fault_oom_above_batch: int = Field(
        default=0,
        ge=0,
        description="Testing only: workers raise a CUDA out-of-memory error for micro-batches "
        "larger than this (0: off).",
    )
    fault_hold_after_step: int = Field(
        default=0,
        ge=0,
        description="Testing only: a worker that reaches this step in a job's first run (not a "
        "resume) holds there, its progress and any checkpoint reported, until it is halted or "
        "cancelled (0: off). Lets a test crash or stop a job at a known point instead of racing "
        "it.",
    )
