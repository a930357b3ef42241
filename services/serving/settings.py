"""Settings of the serving service (prefix ``TUNELINE_SERVING_``)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.modeling.models import default_models_root
from shared.service_ports import DEFAULT_PORTS, default_target
from shared.settings import ServiceSettings


class ServingSettings(ServiceSettings):
    """Ports, the models followed, the registry, the engine and feedback reporting."""

    service_name: ClassVar[str] = "serving"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_SERVING_", extra="ignore", frozen=True)

    grpc_port: int = DEFAULT_PORTS["serving"].grpc
    metrics_port: int = DEFAULT_PORTS["serving"].metrics

    models: list[str] = Field(
        default_factory=list,
        description=(
            "Models to follow (`models/{m}` or ids, JSON list); empty: every model the registry "
            "lists at start and every model a ModelPromoted announces."
        ),
    )
    registry_target: str = Field(
        default=default_target("registry"),
        description="`host:port` of the registry (WatchAlias, ReportLiveQuality).",
    )
    registry_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Deadline of each unary call to the registry."
    )
    watch_retry_seconds: float = Field(
        default=1.0,
        gt=0,
        description="First wait before a broken WatchAlias stream is opened again (doubles).",
    )
    models_root: Path = Field(
        default_factory=default_models_root,
        description="Folder of base models named by `model_name` (shared with the trainer).",
    )
    model_allowed_roots: list[Path] = Field(
        default_factory=list,
        description="Extra folders base models named by absolute `model_path` may live in.",
    )
    device: str | None = Field(
        default=None, description="Torch device (`cuda`, `cpu`); default: CUDA if any, else CPU."
    )
    keep_previous_model: bool = Field(
        default=True,
        description=(
            "Keep the model swapped out last in memory, so a rollback to it swaps back at once "
            "(its digest is checked against the announcement all the same)."
        ),
    )
    max_new_tokens: int = Field(
        default=64, ge=1, le=1024, description="Default token budget of Generate."
    )
    prediction_memory: int = Field(
        default=100_000,
        ge=1,
        description="Recent predictions kept for feedback; older ids answer NOT_FOUND.",
    )
    feedback_success_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A feedback score at or above it counts as a success.",
    )
    live_quality_metric: str = Field(
        default="accuracy", description="Metric name of the counts reported to the registry."
    )
    report_every_feedbacks: int = Field(
        default=50, ge=1, description="Report live quality once this many outcomes wait."
    )
    report_interval_seconds: float = Field(
        default=10.0, gt=0, description="Report waiting outcomes at least this often."
    )
    source: str = Field(
        default_factory=lambda: f"serving/{socket.gethostname()}",
        description="Who reports live quality (`ReportLiveQualityRequest.source`).",
    )

    def resolved_consumer_group(self) -> str:
        """Every replica needs every ModelPromoted: one consumer group per instance (default
        ``tuneline-serving-<host>-<port>``), not one per service."""
        return self.consumer_group or f"tuneline-serving-{socket.gethostname()}-{self.grpc_port}"
