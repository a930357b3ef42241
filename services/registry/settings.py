"""Settings of the registry service (prefix ``TUNELINE_REGISTRY_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    """Ports, database and artifact root of the registry service."""

    service_name: ClassVar[str] = "registry"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_REGISTRY_", extra="ignore", frozen=True)

    grpc_port: int = 50055
    metrics_port: int = 9105
