"""Settings of the registry service (prefix ``TUNELINE_REGISTRY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.registry.domain.alerts import DEFAULT_ROLLBACK_ALERTS
from shared.artifacts import peer_root_uri
from shared.service_ports import DEFAULT_PORTS
from shared.settings import CommonSettings, ServiceSettings, artifact_root_value


class RegistrySettings(ServiceSettings):
    """Ports, database and artifact root of the registry service, and its alert webhook."""

    service_name: ClassVar[str] = "registry"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_REGISTRY_", extra="ignore", frozen=True)

    grpc_port: int = DEFAULT_PORTS["registry"].grpc
    metrics_port: int = DEFAULT_PORTS["registry"].metrics

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
    webhook_max_connections: int = Field(
        default=32,
        ge=1,
        description=(
            "Connections the webhook serves at once; one more is answered 503 at once and closed."
        ),
    )
    webhook_read_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait for the next bytes of a webhook request before it is cut.",
    )
    webhook_request_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Longest time a client may take to send a webhook request's headers and body, "
            "however slowly it trickles them; then the connection is cut."
        ),
    )
    webhook_max_body_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Largest webhook body accepted (larger: 413)."
    )
    webhook_max_json_depth: int = Field(
        default=32,
        ge=4,
        description="Deepest JSON nesting a webhook body may have (deeper: 400, never parsed).",
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

    live_quality_alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description=(
            "Error rate of the live quality confidence sequence: the chance, over a "
            "checkpoint's whole time in production, that counted live quality rolls back a "
            "checkpoint that is at or above its floor."
        ),
    )
    live_quality_min_trials: int = Field(
        default=100,
        ge=1,
        description=(
            "Labelled outcomes a production checkpoint needs before counted live quality can "
            "find it below its floor."
        ),
    )
    live_quality_prior_weight: float = Field(
        default=20.0,
        gt=0,
        description=(
            "Weight, in outcomes, of the confidence sequence's prior (centred on the floor); "
            "larger is tighter near the floor and looser far from it."
        ),
    )

    auto_rollback_limit: int = Field(
        default=1,
        ge=1,
        description=(
            "Automatic rollbacks (by alert or regression) of one model allowed within "
            "`auto_rollback_window_seconds`; the next one is refused and freezes the model's "
            "automation (no automatic promotion or rollback) until a person calls "
            "UnfreezeAutomation (`tuneline models unfreeze`)."
        ),
    )
    auto_rollback_window_seconds: float = Field(
        default=3600.0, gt=0, description="Window of the automatic rollback circuit breaker."
    )
    rollback_alert_names: tuple[str, ...] = Field(
        default=DEFAULT_ROLLBACK_ALERTS,
        description=(
            "Alert names (JSON list) the webhook may roll back on; the alert must also be "
            'labelled action="rollback". Others are acknowledged and ignored.'
        ),
    )

    verify_artifacts: bool = Field(
        default=True,
        description=(
            "Register a checkpoint only if its artifact URI lies under the trainer's artifact "
            "root, and re-hash the artifact before an alias moves to it (false: trust the "
            "events' URI and sha256; for tests feeding synthetic events only)."
        ),
    )
    trainer_artifact_root: Path | str | None = Field(
        default=None,
        description=(
            "The trainer's artifact root (as TUNELINE_TRAINER_ARTIFACT_ROOT): a local folder "
            "(inside the data dir) or `s3://bucket/prefix`; default: the trainer's default, "
            "`<data_dir>/trainer/artifacts`."
        ),
    )

    evaluator_artifact_root: Path | str | None = Field(
        default=None,
        description=(
            "The evaluator's artifact root (as TUNELINE_EVALUATOR_ARTIFACT_ROOT): an "
            "EvaluationCompleted whose merged release URI lies elsewhere is REFUSED; default: "
            "the evaluator's default, `<data_dir>/evaluator/artifacts`."
        ),
    )
    evaluator_target: str | None = Field(
        default=None,
        description=(
            "`host:port` of the evaluator, asked (GetEvaluation) to confirm every PASSED "
            "EvaluationCompleted before it counts: a verdict the evaluator does not confirm is "
            "REFUSED, an evaluator that does not answer is retried. Unset: verdicts are taken "
            "from the events unconfirmed (a WARNING at start; for tests feeding synthetic "
            "events). `tuneline up`, compose and Kubernetes set it."
        ),
    )
    evaluator_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Deadline of each call to the evaluator."
    )

    four_eyes: bool = Field(
        default=False,
        description=(
            "Four-eyes approval: whoever created a checkpoint's training job (the identity the "
            "trainer verified on CreateTrainingJob, Checkpoint.job_creator) or its model (the "
            "verified caller of CreateModel, Model.creator) may neither approve the checkpoint "
            "nor promote it to production (PERMISSION_DENIED, reason FOUR_EYES); another "
            "reviewer must. Automatic promotion is not affected. A deployment-wide policy, so "
            "the people it binds cannot opt out."
        ),
    )

    @field_validator("trainer_artifact_root", "evaluator_artifact_root", mode="before")
    @classmethod
    def _local_peer_roots_are_paths(cls, value: object) -> object:
        return artifact_root_value(value)

    def resolved_trainer_artifact_root(self, common: CommonSettings) -> str:
        """The trainer's artifact root as a URI (``file:///…`` or ``s3://bucket/prefix``)."""
        return peer_root_uri(
            self.trainer_artifact_root, data_dir=common.data_dir, service="trainer"
        )

    def resolved_evaluator_artifact_root(self, common: CommonSettings) -> str:
        """The evaluator's artifact root as a URI (where merged release models are written)."""
        return peer_root_uri(
            self.evaluator_artifact_root, data_dir=common.data_dir, service="evaluator"
        )

    def resolved_webhook_token(self) -> str | None:
        """The bearer token, from the setting or the file; ``None`` disables the webhook."""
        if self.webhook_token is not None and self.webhook_token.get_secret_value():
            return self.webhook_token.get_secret_value()
        if self.webhook_token_file is not None:
            token = self.webhook_token_file.read_text(encoding="utf-8").strip()
            return token or None
        return None
