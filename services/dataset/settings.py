"""Settings of the dataset service (prefix ``TUNELINE_DATASET_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class DatasetSettings(ServiceSettings):
    """Ports, database and artifact root of the dataset service, and its ingestion limits."""

    service_name: ClassVar[str] = "dataset"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_DATASET_", extra="ignore", frozen=True)

    grpc_port: int = 50051
    metrics_port: int = 9101
    max_upload_bytes: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="Largest upload or import, in bytes; more is rejected as `upload_too_large`.",
    )
    max_line_bytes: int = Field(
        default=8 * 1024**2,
        ge=1024,
        description="Longest JSONL line, in bytes; longer is `line_too_long` (never buffered).",
    )
    report_line_numbers: int = Field(
        default=20, ge=1, le=1000, description="Line numbers a report keeps per finding."
    )
    validation_workers: int = Field(
        default_factory=lambda: min(4, os.cpu_count() or 1),
        ge=0,
        description="Worker processes for per-row validation (default: the CPUs, at most 4); "
        "0 validates in the RPC thread.",
    )
    import_roots: list[Path] = Field(
        default_factory=list,
        description="Folders ImportDatasetVersion may read `file://` URIs from, and the data dir.",
    )
