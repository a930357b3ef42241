"""Settings of the evaluator service (prefix ``TUNELINE_EVALUATOR_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class EvaluatorSettings(ServiceSettings):
    """Ports, database and artifact root of the evaluator service."""

    service_name: ClassVar[str] = "evaluator"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_EVALUATOR_", extra="ignore", frozen=True)

    grpc_port: int = 50054
    metrics_port: int = 9104
