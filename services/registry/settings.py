"""Settings of the registry service (prefix ``TUNELINE_REGISTRY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    """Ports, database and artifact root of the registry service, and its alert webhook."""

    service_name: ClassVar[str] = "registry"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_REGISTRY_", extra="ignore", frozen=True)

    grpc_port: int = 50055
    metrics_port: int = 9105

    webhook_host: str = Field(
        default="127.0.0.1", description="Address the Alertmanager webhook binds."
    )
    webhook_port: int = Field(
        default=9095, ge=0, le=65535, description="Alertmanager webhook port (0: any free)."
    )
    webhook_path: str = Field(
        default="/v1/alerts", pattern=r"^/\S*$", description="Path Alertmanager POSTs alerts to."
    )
    webhook_token: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token Alertmanager must send. The webhook only runs when a token is set "
            "(here or in `webhook_token_file`): no unauthenticated rollback trigger is served."
        ),
    )
    webhook_token_file: Path | None = Field(
        default=None,
        description="File holding the bearer token (e.g. a mounted Kubernetes Secret).",
    )
    watch_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        description=(
            "How often the registry checks the database for alias moves committed by another "
            "replica while WatchAlias streams are open (one query per interval for all streams; "
            "idle streams block until woken)."
        ),
    )

    def resolved_webhook_token(self) -> str | None:
        """The bearer token, from the setting or the file; ``None`` disables the webhook."""
        if self.webhook_token is not None and self.webhook_token.get_secret_value():
            return self.webhook_token.get_secret_value()
        if self.webhook_token_file is not None:
            token = self.webhook_token_file.read_text(encoding="utf-8").strip()
            return token or None
        return None
