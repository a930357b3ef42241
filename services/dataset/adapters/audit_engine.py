"""The label audit's model work, run inside the audit worker process (imports torch lazily).

:func:`audit_rows` embeds the rows' texts with the configured encoder's frozen backbone
(:class:`shared.modeling.embeddings.TextEmbedder`) and runs
:func:`services.dataset.domain.label_audit.audit_labels` on the vectors and the texts' TF-IDF view.
:func:`measure_parent_shift` embeds a seeded subset of a version's and its parent's texts with
the same encoder and runs the classifier two-sample test of :mod:`shared.stats.two_sample`.
The gRPC process imports this module only to name these functions to the worker pool; torch
is imported on the first call, in the worker, which keeps the loaded encoder between audits.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.dataset.domain.label_audit import (
    DEFAULT_FOLDS,
    LabelAuditFindings,
    audit_labels,
    word_features,
)
from shared.stats.two_sample import TwoSampleResult, classifier_two_sample_test

if TYPE_CHECKING:
    from shared.modeling.embeddings import TextEmbedder


@dataclass(frozen=True)
class AuditJob:
    """One version's rows to audit, picklable (sent to the worker)."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    encoder: str
    models_root: str
    folds: int = DEFAULT_FOLDS
    seed: int = 0
    device: str | None = None


@functools.cache
def _embedder(encoder: str, models_root: str, device: str | None) -> TextEmbedder:
    # torch and transformers load here, in the worker, once per encoder
    from shared.modeling.embeddings import TextEmbedder  # noqa: PLC0415
    from shared.modeling.models import resolve_base_model  # noqa: PLC0415

    model = resolve_base_model(model_name=encoder, models_root=Path(models_root))
    return TextEmbedder.load(model, device=device)


def embed(
    texts: Sequence[str], encoder: str, models_root: str, device: str | None = None
) -> np.ndarray:
    """The frozen embeddings of ``texts`` (numpy array), with the worker's cached encoder."""
    return _embedder(encoder, models_root, device).embed(texts)


def audit_rows(job: AuditJob) -> LabelAuditFindings:
    """Embed ``job.texts`` and audit ``job.labels`` on them. Raises
    :class:`~services.dataset.domain.label_audit.NotAuditable` and the model loaders' errors."""
    views = [embed(job.texts, job.encoder, job.models_root, job.device), word_features(job.texts)]
    return audit_labels(views, job.labels, folds=job.folds, seed=job.seed)


@dataclass(frozen=True)
class ShiftJob:
    """A version's and its parent's texts to compare, picklable (sent to the worker)."""

    version_texts: tuple[str, ...]
    parent_texts: tuple[str, ...]
    encoder: str
    models_root: str
    permutations: int
    max_rows: int
    seed: int = 0
    device: str | None = None


def _subset(texts: Sequence[str], limit: int, seed: int) -> list[str]:
    """At most ``limit`` of ``texts``, a seeded sample (only these are embedded)."""
    if len(texts) <= limit:
        return list(texts)
    chosen = np.random.default_rng(seed).choice(len(texts), size=limit, replace=False)
    return [texts[i] for i in np.sort(chosen)]


def measure_parent_shift(job: ShiftJob) -> TwoSampleResult:
    """The classifier two-sample test of the parent's (reference) against the version's
    (sample) embeddings, on at most ``job.max_rows`` texts of each."""
    parent = embed(
        _subset(job.parent_texts, job.max_rows, job.seed),
        job.encoder,
        job.models_root,
        job.device,
    )
    version = embed(
        _subset(job.version_texts, job.max_rows, job.seed + 1),
        job.encoder,
        job.models_root,
        job.device,
    )
    return classifier_two_sample_test(
        parent.astype(np.float64),
        version.astype(np.float64),
        permutations=job.permutations,
        max_rows=job.max_rows,
        seed=job.seed,
    )
