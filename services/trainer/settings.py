"""Settings of the trainer service (prefix ``TUNELINE_TRAINER_``)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.modeling import default_models_root
from shared.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    """Ports, database, artifact root, models, devices and prices of the trainer service."""

    service_name: ClassVar[str] = "trainer"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_TRAINER_", extra="ignore", frozen=True)

    grpc_port: int = 50053
    metrics_port: int = 9103
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
    ranks_per_job: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Data-parallel ranks each job trains with, launched by `torchrun` on this "
        "node: one CUDA device per rank (jobs take that many devices each), or gloo processes "
        "sharing the CPU. 1: one process per job.",
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
        default="127.0.0.1:50052",
        description="The splitter, asked (with a deadline) about splits no SplitCreated has "
        "announced to the trainer yet.",
    )
    splitter_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Deadline of a call to the splitter."
    )
    registry_target: str = Field(
        default="127.0.0.1:50055",
        description="The registry, asked (with a deadline) whether a job's or policy's target "
        "model exists before the job or policy is accepted.",
    )
    registry_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Deadline of a call to the registry."
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
