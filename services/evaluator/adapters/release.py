"""The parity check around a scoring job, and the merged release artifact it leaves (torch-free).

The engine merges the candidate adapter into its base model to measure parity; that merged
model is exactly the release artifact engines without LoRA support need, so it is kept rather
than made a second time at promotion: written by the engine into a staging folder, stored
content-addressed (``releases/merged/{sha256}``: the same merge lands in one place, however
often it is made) and named, with its sha256, on the evaluation's parity check. The registry
takes it from EvaluationCompleted and announces it in ModelPromoted and ModelRolledBack.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from services.evaluator.adapters.parity_job import ParityJob
from services.evaluator.adapters.scoring import RowSource, ScoringResult
from services.evaluator.domain.evaluation import Evaluation, ModelSpec
from services.evaluator.domain.parity import ParityGoals, ParityResult, judge_parity
from shared.artifacts import ArtifactError, ArtifactStore
from shared.modeling import folder_sha256
from shared.task_types import TaskType

log = logging.getLogger(__name__)

#: Where merged release models are stored, under their folder sha256.
RELEASE_PREFIX = "releases/merged"


def parity_job(evaluation: Evaluation, primary: RowSource, max_examples: int) -> ParityJob:
    """Ask the engine for parity on the primary set, with a fresh staging folder for the
    merged model (none when nothing is merged: ``max_examples`` 0)."""
    output = ""
    if max_examples > 0:
        output = str(Path(tempfile.mkdtemp(prefix="tuneline-merged-")) / "model")
    return ParityJob(
        set_key=primary.set_key,
        max_examples=max_examples,
        merged_output_dir=output,
        adapter_sha256=evaluation.checkpoint.sha256,
    )


def discard_merged_staging(job: ParityJob | None) -> None:
    if job is not None and job.merged_output_dir:
        shutil.rmtree(Path(job.merged_output_dir).parent, ignore_errors=True)


def store_release(artifacts: ArtifactStore, folder: Path) -> tuple[str, str]:
    """Store a merged model folder content-addressed; its URI and sha256."""
    digest = folder_sha256(folder)
    stored = artifacts.put_directory(f"{RELEASE_PREFIX}/{digest}", folder)
    return stored.uri, digest


def check_parity(
    artifacts: ArtifactStore,
    model: ModelSpec,
    result: ScoringResult,
    goals: ParityGoals | None = None,
) -> ParityResult | None:
    """Judge what the engine measured against the model's serving profile; keep the merged
    model as the release artifact. None when the job measured nothing (no adapter)."""
    measured = result.parity
    if measured is None:
        return None
    parity = judge_parity(
        measurement=measured.measurement,
        adapter=measured.adapter,
        trained_tokenizer=measured.tokenizer if measured.tokenizer.tokenizer_sha256 else None,
        profile=model.serving_profile,
        goals=goals or ParityGoals(),
        causal_lm=model.task_type is TaskType.CAUSAL_LM,
        skipped_numeric_reason=measured.skipped_reason,
    )
    if not measured.merged_dir:
        return parity
    folder = Path(measured.merged_dir)
    try:
        uri, digest = store_release(artifacts, folder)
    except ArtifactError as error:
        # the verdict stands; only the release artifact is missing (announced empty)
        log.warning("merged release model not stored", extra={"error": str(error)})
        return parity
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    return replace(parity, merged_artifact_uri=uri, merged_sha256=digest)
