"""Settings of the evaluator service (prefix ``TUNELINE_EVALUATOR_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.artifacts import peer_root_uri
from shared.modeling.models import default_models_root
from shared.service_ports import DEFAULT_PORTS, default_target
from shared.settings import CommonSettings, ServiceSettings, artifact_root_value


class EvaluatorSettings(ServiceSettings):
    """Ports, database and artifact root of the evaluator, its registry and its engine."""

    service_name: ClassVar[str] = "evaluator"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_EVALUATOR_", extra="ignore", frozen=True)

    grpc_port: int = DEFAULT_PORTS["evaluator"].grpc
    metrics_port: int = DEFAULT_PORTS["evaluator"].metrics

    registry_target: str = Field(
        default=default_target("registry"),
        description="`host:port` of the registry (models, gate policies, `production`).",
    )
    registry_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Deadline of each call to the registry."
    )
    trainer_artifact_root: Path | str | None = Field(
        default=None,
        description=(
            "The trainer's artifact root (as TUNELINE_TRAINER_ARTIFACT_ROOT): a CheckpointReady "
            "whose `artifact_uri` lies elsewhere goes to the DLQ unevaluated; default: the "
            "trainer's default, `<data_dir>/trainer/artifacts`."
        ),
    )
    dependency_wait_seconds: float = Field(
        default=120.0,
        ge=0,
        description=(
            "How long an evaluation waits for what it depends on (the registry answering, the "
            "SplitCreated of its evaluation set arriving) before it fails."
        ),
    )
    models_root: Path = Field(
        default_factory=default_models_root,
        description="Folder of base models named by `model_name` (shared with the trainer).",
    )
    model_allowed_roots: list[Path] = Field(
        default_factory=list,
        description="Extra folders base models named by absolute `model_path` may live in.",
    )
    default_checkpoint_selection: Literal[
        "ALL", "BEST_AND_FINAL", "FINAL", "NONE", "BEST_AT_END"
    ] = Field(
        default="BEST_AT_END",
        description=(
            "Which checkpoints CheckpointReady evaluates for a model that has no evaluation "
            "policy set. BEST_AT_END: one verdict per training job, on its best checkpoint by "
            "validation loss once the job has ended (what should be promoted, and quick on a "
            "CPU-only pipeline); SetEvaluationPolicy chooses per model."
        ),
    )
    max_seq_length: int = Field(
        default=512,
        ge=8,
        description=(
            "Token limit of an evaluated example (longer: truncated) when the candidate's "
            "adapter does not record the limit it was trained with; when it does, candidate "
            "and baseline are scored with that one."
        ),
    )
    parity_max_examples: int = Field(
        default=64,
        ge=0,
        description=(
            "Rows of the primary evaluation set on which the parity check compares the merged "
            "and the unmerged candidate (fp32 logits, bf16 agreement); 0 skips the numeric "
            "part (the profile lint and the fingerprint check still run)."
        ),
    )
    contamination_max_share: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description=(
            "Share of primary evaluation rows with a near-duplicate in the candidate's training "
            "rows past which the evaluation is contaminated and cannot PASS (it reports "
            "INSUFFICIENT_DATA). 1 %: memorised rows lift a metric by at most their share, "
            "below the tolerance a gate uses."
        ),
    )
    near_duplicate_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "Estimated Jaccard similarity (5-byte shingles) from which an evaluation row and a "
            "training row are near-duplicates (the dataset gate's and the splitter's default)."
        ),
    )
    shift_min_effect: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description=(
            "Effect size (AUC - 0.5 of a classifier telling evaluation from training rows) "
            "from which a shift is flagged, when its permutation p-value is also at most "
            "`shift_significance_level`. Reported, never blocking."
        ),
    )
    shift_significance_level: float = Field(default=0.01, gt=0, lt=1)
    shift_permutations: int = Field(default=200, ge=19, le=10_000)
    shift_max_rows: int = Field(
        default=1000,
        ge=20,
        description="Rows of each side embedded for the shift check (a seeded subset beyond).",
    )
    far_max_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description=(
            "Share of evaluation rows farther from every training row than 99 % of training "
            "rows are from each other, past which a shift is flagged (1 % expected)."
        ),
    )
    shift_check: bool = Field(
        default=True,
        description="Run the shift check (embeds up to 3 x shift_max_rows texts per evaluation).",
    )
    device: str | None = Field(
        default=None,
        description="Torch device of the worker (`cuda`, `cpu`); default: CUDA if any.",
    )
    evaluation_timeout_seconds: float = Field(
        default=3600.0, gt=0, description="Longest an evaluation may run before it fails."
    )
    poll_seconds: float = Field(
        default=0.5, gt=0, description="How often the supervisor looks for queued evaluations."
    )

    @field_validator("trainer_artifact_root", mode="before")
    @classmethod
    def _local_trainer_root_is_a_path(cls, value: object) -> object:
        return artifact_root_value(value)

    def resolved_trainer_artifact_root(self, common: CommonSettings) -> str:
        """The trainer's artifact root as a URI (``file:///…`` or ``s3://bucket/prefix``)."""
        return peer_root_uri(
            self.trainer_artifact_root, data_dir=common.data_dir, service="trainer"
        )
