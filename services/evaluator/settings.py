"""Settings of the evaluator service (prefix ``TUNELINE_EVALUATOR_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.modeling.models import default_models_root
from shared.settings import ServiceSettings


class EvaluatorSettings(ServiceSettings):
    """Ports, database and artifact root of the evaluator, its registry and its engine."""

    service_name: ClassVar[str] = "evaluator"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_EVALUATOR_", extra="ignore", frozen=True)

    grpc_port: int = 50054
    metrics_port: int = 9104

    registry_target: str = Field(
        default="127.0.0.1:50055",
        description="`host:port` of the registry (models, gate policies, `production`).",
    )
    registry_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Deadline of each call to the registry."
    )
    dependency_wait_seconds: float = Field(
        default=120.0,
        ge=0,
        description=(
            "How long an evaluation waits for what it depends on (the registry answering, the "
            "SplitCreated of its evaluation set arriving) before it fails."
        ),
    )
    models_root: Path = Field(
        default_factory=default_models_root,
        description="Folder of base models named by `model_name` (shared with the trainer).",
    )
    model_allowed_roots: list[Path] = Field(
        default_factory=list,
        description="Extra folders base models named by absolute `model_path` may live in.",
    )
    default_checkpoint_selection: Literal["ALL", "BEST_AND_FINAL", "FINAL", "NONE"] = Field(
        default="FINAL",
        description=(
            "Which checkpoints CheckpointReady evaluates for a model that has no evaluation "
            "policy set. FINAL: one verdict per training job, which keeps a CPU-only pipeline "
            "quick; SetEvaluationPolicy chooses per model."
        ),
    )
    max_seq_length: int = Field(
        default=512, ge=8, description="Token limit of an evaluated example (longer: truncated)."
    )
    device: str | None = Field(
        default=None,
        description="Torch device of the worker (`cuda`, `cpu`); default: CUDA if any.",
    )
    evaluation_timeout_seconds: float = Field(
        default=3600.0, gt=0, description="Longest an evaluation may run before it fails."
    )
    poll_seconds: float = Field(
        default=0.5, gt=0, description="How often the supervisor looks for queued evaluations."
    )
