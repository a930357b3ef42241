"""Settings of the splitter service (prefix ``TUNELINE_SPLITTER_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.service_ports import DEFAULT_PORTS, default_target
from shared.settings import ServiceSettings


class SplitterSettings(ServiceSettings):
    """Ports, database, artifact root and the dataset service it asks, of the splitter."""

    service_name: ClassVar[str] = "splitter"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_SPLITTER_", extra="ignore", frozen=True)

    grpc_port: int = DEFAULT_PORTS["splitter"].grpc
    metrics_port: int = DEFAULT_PORTS["splitter"].metrics
    dataset_target: str = Field(
        default=default_target("dataset"),
        description="The dataset service, asked (with a deadline) about versions no "
        "DatasetVersioned has announced to the splitter yet.",
    )
    dataset_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Deadline of a call to the dataset service."
    )
