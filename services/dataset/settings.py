"""Settings of the dataset service (prefix ``TUNELINE_DATASET_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.dataset.domain.label_audit import DEFAULT_FOLDS as DEFAULT_AUDIT_FOLDS
from services.dataset.domain.near_duplicate_rows import (
    DEFAULT_MAX_ROWS as DEFAULT_NEAR_DUPLICATE_MAX_ROWS,
)
from services.dataset.domain.parent_shift import ParentShiftPolicy
from services.dataset.domain.policy import ValueBounds
from shared.modeling.models import default_models_root
from shared.modeling.packaged import ENCODER
from shared.near_duplicates import DEFAULT_THRESHOLD as DEFAULT_NEAR_DUPLICATE_THRESHOLD
from shared.service_ports import DEFAULT_PORTS
from shared.settings import ServiceSettings


class DatasetSettings(ServiceSettings):
    """Ports, database and artifact root of the dataset service, and its ingestion limits."""

    service_name: ClassVar[str] = "dataset"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_DATASET_", extra="ignore", frozen=True)

    grpc_port: int = DEFAULT_PORTS["dataset"].grpc
    metrics_port: int = DEFAULT_PORTS["dataset"].metrics
    max_upload_bytes: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="Largest upload or import, in bytes; more is rejected as `upload_too_large`.",
    )
    max_line_bytes: int = Field(
        default=8 * 1024**2,
        ge=1024,
        description="Longest JSONL line, in bytes; longer is `line_too_long` (never buffered).",
    )
    max_label_length: int = Field(
        default=ValueBounds.max_label_length,
        ge=1,
        description="Longest label, in code points; longer is `label_too_long`.",
    )
    max_labels: int = Field(
        default=ValueBounds.max_labels,
        ge=2,
        description="Most distinct labels in one version; more is `too_many_labels`.",
    )
    max_slice_length: int = Field(
        default=ValueBounds.max_slice_length,
        ge=1,
        description="Longest slice (`slice`, or the first of `tags`), in code points; longer is "
        "`slice_too_long`.",
    )
    max_slices: int = Field(
        default=ValueBounds.max_slices,
        ge=1,
        description="Most distinct slices in one version; more is `too_many_slices`.",
    )
    near_duplicate_threshold: float = Field(
        default=DEFAULT_NEAR_DUPLICATE_THRESHOLD,
        ge=0,
        le=1,
        description="Estimated Jaccard similarity (of 5-byte shingles, MinHash/LSH) from which "
        "two inputs are reported as `near_duplicates`; 0 turns the check off.",
    )
    near_duplicate_max_rows: int = Field(
        default=DEFAULT_NEAR_DUPLICATE_MAX_ROWS,
        ge=0,
        description="Most rows the near-duplicate check runs on (it keeps the texts, and costs "
        "about 0.15 ms of CPU per row, spread over the validation workers); a larger version "
        "reports `near_duplicate_check_skipped`.",
    )
    report_line_numbers: int = Field(
        default=20, ge=1, le=1000, description="Line numbers a report keeps per finding."
    )
    validation_workers: int = Field(
        # one more than the CPUs: the service's own thread (receiving, hashing, the cross-row
        # rules, writing) needs about a third of the workers' CPU and leaves a core idle while
        # it runs; on two cores, three workers ingest ~8% faster than two (bench/ingest.py)
        default_factory=lambda: min(4, (os.cpu_count() or 1) + 1),
        ge=0,
        description="Worker processes for per-row validation (default: one more than the CPUs, "
        "at most 4); 0 validates in the RPC thread.",
    )
    import_roots: list[Path] = Field(
        default_factory=list,
        description="Folders ImportDatasetVersion may read `file://` URIs from (none by "
        "default; the data dir is not one unless listed). Symlinks below them are refused.",
    )

    label_audit_enabled: bool = Field(
        default=True,
        description="Audit the labels of every new CLASSIFICATION version in a worker process "
        "(false: audits stay PENDING and the trainer's policies wait).",
    )
    label_audit_encoder: str = Field(
        default=ENCODER,
        description="Model (a name in `models_root`) whose frozen, mean-pooled embeddings the "
        "label audit fits its out-of-fold logistic regression on.",
    )
    models_root: Path = Field(
        default_factory=default_models_root,
        description="Folder of base models (shared with the trainer and the evaluator).",
    )
    label_audit_folds: int = Field(
        default=DEFAULT_AUDIT_FOLDS, ge=2, le=20, description="Folds of the out-of-fold fits."
    )
    label_audit_timeout_seconds: float = Field(
        default=3600, gt=0, description="Longest one label audit may run before it is FAILED."
    )
    label_audit_poll_seconds: float = Field(
        default=5, gt=0, description="How often PENDING audits are looked for besides wake-ups."
    )
    parent_shift_enabled: bool = Field(
        default=True,
        description="With the label audit, test whether the texts a version adds shifted from "
        "its parent's (a classifier two-sample test on the audit encoder's embeddings; report "
        "only).",
    )
    parent_shift_min_effect: float = Field(
        default=ParentShiftPolicy.min_effect,
        gt=0,
        le=0.5,
        description="Effect size (AUC - 0.5) from which the parent shift is flagged (at "
        "p <= 0.01).",
    )
    parent_shift_max_rows: int = Field(
        default=ParentShiftPolicy.max_rows,
        ge=10,
        description="Rows of each side the parent-shift test embeds (a seeded subset beyond).",
    )

    def parent_shift_policy(self) -> ParentShiftPolicy:
        return ParentShiftPolicy(
            min_effect=self.parent_shift_min_effect,
            max_rows=self.parent_shift_max_rows,
            enabled=self.parent_shift_enabled,
        )

    def value_bounds(self) -> ValueBounds:
        """The bounds on label and slice names these settings make."""
        return ValueBounds(
            max_label_length=self.max_label_length,
            max_labels=self.max_labels,
            max_slice_length=self.max_slice_length,
            max_slices=self.max_slices,
        )
