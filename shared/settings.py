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

import os
import socket
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Settings every Tuneline process shares (prefix ``TUNELINE_``)."""

    model_config = SettingsConfigDict(env_prefix="TUNELINE_", extra="ignore", frozen=True)

    kafka_bootstrap: str = Field(
        default="127.0.0.1:19092", description="Kafka bootstrap servers, comma-separated."
    )
    kafka_replication_factor: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Replicas of each topic a service creates; unset: min(3, brokers that answer). "
            "Set it (3) in production so a broker down at start cannot lower it."
        ),
    )
    kafka_min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description=(
            "`min.insync.replicas` of the topics a service creates; unset: 2 where the "
            "replication factor is 3 or more, else 1."
        ),
    )
    # -- Kafka client security (shared/events/security.py) --------------------------------
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description=(
            "How producers, consumers and admin clients talk to Kafka: `SASL_SSL` (TLS plus a "
            "SCRAM user; production), `SSL` (TLS, optionally a client certificate) or "
            "`PLAINTEXT` (local development)."
        ),
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism of `SASL_SSL`."
    )
    kafka_username: str | None = Field(
        default=None, description="SCRAM user of this process (one per service)."
    )
    kafka_password: str | None = Field(
        default=None,
        description="Password of `KAFKA_USERNAME`; prefer `KAFKA_PASSWORD_FILE`.",
    )
    kafka_password_file: Path | None = Field(
        default=None,
        description="File holding the Kafka password (a mounted Kubernetes Secret); read at start.",
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM CA bundle the Kafka clients trust for brokers (default: system roots).",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate presented to Kafka (mutual TLS)."
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of `KAFKA_SSL_CERTFILE`."
    )
    data_dir: Path = Field(
        default=Path(".tuneline/data"),
        description="Root of local state: one SQLite file and one artifact folder per service.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description=(
            "Endpoint of an S3-compatible server (MinIO, Ceph, moto) for `s3://` artifact roots; "
            "unset: AWS S3 (credentials and region from the standard `AWS_*` variables)."
        ),
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")
    log_format: Literal["json", "console"] = Field(
        default="json",
        description="`json` for machines (one object per line), `console` for people.",
    )
    consumer_max_attempts: int = Field(
        default=3,
        ge=1,
        description=(
            "Attempts per Kafka message whose handler fails with an unknown error before it "
            "goes to the DLQ (transient failures are retried until they apply)."
        ),
    )
    outbox_poll_seconds: float = Field(
        default=0.2, gt=0, description="How often the outbox relay looks for unsent events."
    )
    consumer_retry_backoff_seconds: float = Field(
        default=0.2,
        gt=0,
        description=(
            "First wait before a failed Kafka message is tried again (doubles on each failure)."
        ),
    )
    consumer_max_retry_backoff_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Longest wait between tries of a message whose handler fails transiently "
            "(database or broker down); such messages are retried until they apply."
        ),
    )
    outbox_park_after_attempts: int = Field(
        default=10,
        ge=1,
        description=(
            "Failed sends after which an outbox event with an unknown error is parked "
            "(an event the broker refuses is parked at once; a broker outage never parks)."
        ),
    )
    outbox_retention_hours: float = Field(
        default=168.0, gt=0, description="How long sent outbox events are kept before pruning."
    )
    kafka_start_wait_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "How long a service waits at start for Kafka (topics) before serving without it; "
            "topics are then ensured in the background and the outbox holds events."
        ),
    )
    grpc_shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="Time in-flight RPCs get to finish on SIGTERM."
    )
    # -- gRPC capacity (shared/grpc/capacity.py): streams must not starve unary calls ------
    grpc_unary_workers: int = Field(
        default=16,
        ge=1,
        description="Server worker threads kept for unary calls, on top of the stream slots.",
    )
    grpc_max_streams: int = Field(
        default=256,
        ge=1,
        description=(
            "Streaming RPCs (watches, uploads) a server runs at once; each holds a worker thread. "
            "Beyond it a new stream gets RESOURCE_EXHAUSTED."
        ),
    )
    grpc_max_streams_per_method: int = Field(
        default=128, ge=1, description="Streaming RPCs of one method a server runs at once."
    )
    grpc_max_streams_per_client: int = Field(
        default=64,
        ge=1,
        description="Streaming RPCs of one client (principal, else peer host) at once.",
    )
    grpc_upload_idle_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A client-streaming upload that sends nothing for this long is cancelled.",
    )
    grpc_keepalive_seconds: float = Field(
        default=30.0,
        ge=1,
        description="Keepalive ping interval: servers on idle connections, clients in open calls.",
    )
    grpc_keepalive_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A connection whose keepalive ping is not answered in this time is closed.",
    )
    grpc_reflection: bool = Field(
        default=True,
        description=(
            "Serve gRPC server reflection (what `grpcurl` lists and describes); off in "
            "production, where it would hand any caller the full API surface."
        ),
    )

    # -- transport security and authorisation (shared/security, shared/grpc/auth.py) ------
    auth_mode: Literal["enforce", "insecure"] = Field(
        default="enforce",
        description=(
            "`enforce`: TLS on every gRPC server, every call authenticated and authorised "
            "(a server without `TLS_CERT_FILE` refuses to start). `insecure`: plaintext, no "
            "checks, a warning at start; for tests and local debugging only."
        ),
    )
    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate chain this process presents (server, and client to peers).",
    )
    tls_key_file: Path | None = Field(
        default=None, description="PEM private key of `TLS_CERT_FILE`."
    )
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle clients trust for servers (default: the system roots).",
    )
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle servers trust for client certificates (mutual TLS).",
    )
    tls_require_client_cert: bool = Field(
        default=True,
        description=(
            "With `TLS_CLIENT_CA_FILE`: refuse handshakes without a trusted client certificate. "
            "Off: no client certificate is asked for and callers identify with a bearer token."
        ),
    )
    tls_server_name: str | None = Field(
        default=None,
        description="Host name clients check the server certificate against (default: target).",
    )
    auth_token: str | None = Field(
        default=None, description="Bearer token (JWT) the SDK, CLI and peers send on each call."
    )
    auth_token_file: Path | None = Field(
        default=None, description="File holding the bearer token; re-read on change."
    )
    auth_jwt_jwks_file: Path | None = Field(
        default=None,
        description="JWKS file of the keys bearer tokens are verified with; re-read on change.",
    )
    auth_jwt_issuer: str | None = Field(
        default=None, description="Required `iss` of bearer tokens (needed with a JWKS file)."
    )
    auth_jwt_audience: str = Field(
        default="tuneline", description="Required `aud` of bearer tokens."
    )
    auth_jwt_roles_claim: str = Field(
        default="roles", description="Claim holding a token's Tuneline roles (a list)."
    )
    auth_jwt_leeway_seconds: float = Field(
        default=30.0, ge=0, description="Clock skew allowed on `exp` and `nbf`."
    )
    auth_policy_file: Path | None = Field(
        default=None,
        description=(
            "JSON file overriding the role table (`roles`: role → RPC full names) and binding "
            "identities to roles (`bindings`: identity → roles)."
        ),
    )
    auth_trusted_proxies: tuple[str, ...] = Field(
        default=(),
        description=(
            "Identities allowed to assert another caller in `x-tuneline-principal` metadata "
            "(JSON list); the header is ignored from anyone else."
        ),
    )
    auth_open_services: tuple[str, ...] = Field(
        default=("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"),
        description="gRPC services callable without credentials (probes, grpcurl); JSON list.",
    )


def artifact_root_value(value: object) -> object:
    """An artifact root setting as read: ``s3://…`` stays a URI (a Path would fold its ``//``);
    any other string is a local path."""
    if isinstance(value, str) and not value.startswith("s3://"):
        return Path(value)
    return value


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
    grpc_health_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=(
            "Extra plaintext port serving only grpc.health.v1, for probes that speak no TLS "
            "(Kubernetes' native gRPC probes); unset: none."
        ),
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file under the data dir."
    )
    artifact_root: Path | str | None = Field(
        default=None,
        description=(
            "Artifact store: a local directory, or `s3://bucket/prefix` for S3; "
            "default: a directory under the data dir."
        ),
    )
    consumer_group: str | None = Field(
        default=None,
        description="Kafka consumer group of its subscriptions; default: tuneline-<service>.",
    )

    @field_validator("artifact_root", mode="before")
    @classmethod
    def _local_roots_are_paths(cls, value: object) -> object:
        return artifact_root_value(value)

    def resolved_database_url(self, common: CommonSettings) -> str:
        """The database URL, defaulting to ``<data_dir>/<service>/<service>.db``."""
        if self.database_url:
            return self.database_url
        path = (common.data_dir / self.service_name / f"{self.service_name}.db").resolve()
        return f"sqlite:///{path}"

    def replica_id(self) -> str:
        """Which of its service's replicas this process is: its host and gRPC port. Two
        replicas on one host listen on different ports; a replica restarted in place keeps its
        id, so it takes back the outbox rows it had leased at once instead of waiting out the
        lease (``shared.events.outbox``). A process on any free port is its own replica."""
        port = str(self.grpc_port) if self.grpc_port else f"pid{os.getpid()}"
        return f"{socket.gethostname()}:{port}"

    def resolved_consumer_group(self) -> str:
        """The Kafka consumer group, defaulting to ``tuneline-<service>``."""
        return self.consumer_group or f"tuneline-{self.service_name}"

    def resolved_artifact_root(self, common: CommonSettings) -> Path | str:
        """The artifact root: an ``s3://`` URI as configured, or a resolved local folder
        (default ``<data_dir>/<service>/artifacts``)."""
        if isinstance(self.artifact_root, str):
            return self.artifact_root
        root = self.artifact_root or common.data_dir / self.service_name / "artifacts"
        return root.resolve()
