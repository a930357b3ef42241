"""Settings of the splitter service (prefix ``TUNELINE_SPLITTER_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class SplitterSettings(ServiceSettings):
    """Ports, database and artifact root of the splitter service."""

    service_name: ClassVar[str] = "splitter"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_SPLITTER_", extra="ignore", frozen=True)

    grpc_port: int = 50052
    metrics_port: int = 9102
