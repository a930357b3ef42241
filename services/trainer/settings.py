"""Settings of the trainer service (prefix ``TUNELINE_TRAINER_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    """Ports, database and artifact root of the trainer service."""

    service_name: ClassVar[str] = "trainer"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_TRAINER_", extra="ignore", frozen=True)

    grpc_port: int = 50053
    metrics_port: int = 9103
