"""Configuration from ``TUNELINE_*`` environment variables, read once at start-up.

Two layers, both pydantic-settings models:

* :class:`CommonSettings` (prefix ``TUNELINE_``) holds what every process shares: the Kafka
  bootstrap, the data directory, logging.
* Each service subclasses :class:`ServiceSettings` with its own prefix
  (``TUNELINE_DATASET_``, ``TUNELINE_REGISTRY_`` …) for its ports, database and artifact root, so
  five services can run side by side on one machine from one environment.

``main`` builds both once and passes them down; nothing reads the environment afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Settings every Tuneline process shares (prefix ``TUNELINE_``)."""

    model_config = SettingsConfigDict(env_prefix="TUNELINE_", extra="ignore", frozen=True)

    kafka_bootstrap: str = Field(
        default="127.0.0.1:19092", description="Kafka bootstrap servers, comma-separated."
    )
    data_dir: Path = Field(
        default=Path(".tuneline/data"),
        description="Root of local state: one SQLite file and one artifact folder per service.",
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")
    log_format: Literal["json", "console"] = Field(
        default="json",
        description="`json` for machines (one object per line), `console` for people.",
    )
    consumer_max_attempts: int = Field(
        default=3, ge=1, description="Attempts per Kafka message before it goes to the DLQ."
    )
    outbox_poll_seconds: float = Field(
        default=0.2, gt=0, description="How often the outbox relay looks for unsent events."
    )
    grpc_shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="Time in-flight RPCs get to finish on SIGTERM."
    )


class ServiceSettings(BaseSettings):
    """Per-service settings. Subclasses set ``service_name`` and ``env_prefix``."""

    service_name: ClassVar[str] = "service"
    # Subclasses set their own prefix; this one only keeps a forgetful subclass from reading
    # bare GRPC_PORT or DATABASE_URL.
    model_config = SettingsConfigDict(env_prefix="TUNELINE_SERVICE_", extra="ignore", frozen=True)

    grpc_host: str = Field(default="127.0.0.1", description="Address the gRPC server binds.")
    grpc_port: int = Field(default=0, ge=0, le=65535, description="gRPC port (0: any free).")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus metrics port (0: any free)."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file under the data dir."
    )
    artifact_root: Path | None = Field(
        default=None, description="Local artifact directory; default: under the data dir."
    )
    consumer_group: str | None = Field(
        default=None,
        description="Kafka consumer group of its subscriptions; default: tuneline-<service>.",
    )

    def resolved_database_url(self, common: CommonSettings) -> str:
        """The database URL, defaulting to ``<data_dir>/<service>/<service>.db``."""
        if self.database_url:
            return self.database_url
        path = (common.data_dir / self.service_name / f"{self.service_name}.db").resolve()
        return f"sqlite:///{path}"

    def resolved_consumer_group(self) -> str:
        """The Kafka consumer group, defaulting to ``tuneline-<service>``."""
        return self.consumer_group or f"tuneline-{self.service_name}"

    def resolved_artifact_root(self, common: CommonSettings) -> Path:
        """The artifact root, defaulting to ``<data_dir>/<service>/artifacts``."""
        root = self.artifact_root or common.data_dir / self.service_name / "artifacts"
        return root.resolve()
