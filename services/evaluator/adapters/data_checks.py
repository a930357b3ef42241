"""Run a job's data checks in the worker: contamination, coverage and shift (imports torch).

The rules are :mod:`services.evaluator.domain.data_checks`; this module reads the candidate's
training rows (the train part of its lineage split, digests checked), and for the shift test
embeds a seeded subset of both sides with the candidate's base model
(:class:`shared.modeling.embeddings.TextEmbedder`: frozen backbone, mean-pooled, fp32 on CPU).
A check that cannot run is SKIPPED with its reason; it never fails the evaluation.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch

from services.evaluator.adapters.scoring import DataChecksJob, ScoringJob
from services.evaluator.domain.data_checks import (
    DataCheckPolicy,
    DataChecks,
    DataCheckStatus,
    Shift,
    check_contamination,
    check_coverage,
    comparison_texts,
    judge_shift,
)
from shared.modeling import (
    FolderHashCache,
    ModelingError,
    Row,
    read_adapter_metadata,
    resolve_base_model,
)
from shared.modeling.embeddings import TextEmbedder
from shared.modeling.encoding import row_slice
from shared.stats.two_sample import classifier_two_sample_test, far_from_reference

log = logging.getLogger(__name__)

#: Seeds the subsets embedded and the shift test (the same job gives the same numbers).
_SEED = 17


def _sample(texts: Sequence[str], limit: int) -> list[str]:
    if len(texts) <= limit:
        return list(texts)
    return random.Random(_SEED).sample(list(texts), limit)


def measure_shift(
    evaluation_texts: Sequence[str],
    training_texts: Sequence[str],
    embedder: TextEmbedder,
    policy: DataCheckPolicy,
) -> Shift:
    """The shift check on embeddings of (at most ``shift_max_rows`` of) each side."""
    evaluation = [t for t in evaluation_texts if t]
    training = [t for t in training_texts if t]
    if len(evaluation) < 10 or len(training) < 10:
        return Shift(DataCheckStatus.SKIPPED, "fewer than 10 evaluation or training texts")
    evaluated = embedder.embed(_sample(evaluation, policy.shift_max_rows)).astype(np.float64)
    trained = embedder.embed(_sample(training, 2 * policy.shift_max_rows)).astype(np.float64)
    test = classifier_two_sample_test(
        trained,
        evaluated,
        permutations=policy.shift_permutations,
        max_rows=policy.shift_max_rows,
        seed=_SEED,
    )
    far = far_from_reference(
        trained, evaluated, quantile=policy.far_quantile, max_rows=policy.shift_max_rows, seed=_SEED
    )
    return judge_shift(test, far, policy)


def _candidate_base_model(job: ScoringJob, hashes: FolderHashCache) -> Path:
    """The candidate's base model folder (the backbone the shift test embeds with)."""
    candidate = job.subjects[0]
    name, path = candidate.base_model.model_name, candidate.base_model.model_path
    if candidate.adapter_path:
        metadata = read_adapter_metadata(Path(candidate.adapter_path))
        name, path = metadata.base_model_name, metadata.base_model_path
    return resolve_base_model(
        model_name=name,
        model_path=path,
        models_root=Path(job.models_root),
        allowed_roots=[Path(r) for r in job.allowed_roots],
        hashes=hashes,
    ).path


def run_data_checks(
    job: ScoringJob,
    checks: DataChecksJob,
    evaluation_rows: Sequence[Row],
    training_rows: Sequence[Row],
    hashes: FolderHashCache,
) -> DataChecks:
    """Every data check of ``job``'s primary set (``evaluation_rows``) against the train part
    of the candidate's split (``training_rows``)."""
    policy = checks.policy
    contamination = check_contamination(evaluation_rows, training_rows, policy)
    coverage = check_coverage(evaluation_rows, training_rows, _slice_of)
    if not policy.shift_enabled:
        shift = Shift(DataCheckStatus.SKIPPED, "the shift check is turned off")
    else:
        try:
            embedder = TextEmbedder.from_folder(
                _candidate_base_model(job, hashes), device=job.device
            )
            shift = measure_shift(
                comparison_texts(evaluation_rows), comparison_texts(training_rows), embedder, policy
            )
        except (ModelingError, torch.cuda.OutOfMemoryError, MemoryError) as error:
            # the verdict does not depend on this check: it is skipped, the evaluation goes on
            shift = Shift(DataCheckStatus.SKIPPED, f"no embeddings: {error}")
    log.info(
        "data checks done",
        extra={
            "evaluation": job.evaluation,
            "contamination": contamination.status.value,
            "coverage": coverage.status.value,
            "shift": shift.status.value,
        },
    )
    return DataChecks(checks.training_split, contamination, coverage, shift)


def _slice_of(row: Mapping[str, object]) -> str:
    return row_slice(cast(Row, row))
