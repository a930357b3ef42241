"""What a checkpoint is released as, read from the evaluator's parity check: why a parity check
failed, the merged release artifact kept on the checkpoint's record, and the release fields of
ModelPromoted, ModelRolledBack and Alias.

The evaluator's parity check (EvaluationCompleted.parity) decides whether what was evaluated is
what will serve; a FAILED one blocks every promotion, automatic or explicit, and the reason is
recorded on the evaluation's decision (the refusal of explicit moves is in
``handlers/reviews.py``). The merged release model the check produced is kept on the checkpoint
and announced with the adapter in ModelPromoted and ModelRolledBack, next to the fingerprint
the trainer recorded.
"""

from __future__ import annotations

from typing import Any

from services.registry.adapters.tables import CheckpointRow, EvaluationRow
from services.registry.domain.events import MergedRelease
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.registry.v1 import resources_pb2


def parity_failure(parity: common_pb2.ParityCheck) -> str:
    """Why a parity check FAILED, for the decision and the refusal; "" when it did not."""
    if parity.verdict != common_pb2.PARITY_VERDICT_FAILED:
        return ""
    reasons = [f.reason for f in parity.findings if f.verdict == common_pb2.PARITY_VERDICT_FAILED]
    return "parity failed: " + ("; ".join(reasons) or "no reason given")


def parity_failure_of(evaluation: EvaluationRow) -> str:
    """:func:`parity_failure` of a stored evaluation's parity check."""
    return parity_failure(resources_pb2.CheckpointEvaluation.FromString(evaluation.record).parity)


def keep_merged_release(checkpoint: CheckpointRow, release: MergedRelease) -> None:
    """The latest evaluation's merged release artifact becomes the checkpoint's (the caller
    skips evaluations made before parity existed: they leave it as it is)."""
    record = resources_pb2.Checkpoint.FromString(checkpoint.record)
    record.merged_artifact_uri = release.artifact_uri
    record.merged_sha256 = release.sha256
    checkpoint.record = record.SerializeToString(deterministic=True)


def release_fields(record: resources_pb2.Checkpoint) -> dict[str, Any]:
    """The release fields of ModelPromoted / ModelRolledBack / Alias for a checkpoint."""
    fields: dict[str, Any] = {
        "merged_artifact_uri": record.merged_artifact_uri,
        "merged_sha256": record.merged_sha256,
    }
    if record.HasField("tokenizer_fingerprint"):
        fields["tokenizer_fingerprint"] = record.tokenizer_fingerprint
    return fields
