"""Settings of the dataset service (prefix ``TUNELINE_DATASET_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class DatasetSettings(ServiceSettings):
    """Ports, database and artifact root of the dataset service."""

    service_name: ClassVar[str] = "dataset"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_DATASET_", extra="ignore", frozen=True)

    grpc_port: int = 50051
    metrics_port: int = 9101
