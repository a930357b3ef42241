"""What a checkpoint is released as, and whether it may be: parity, the merged release
artifact, the tokenizer fingerprint, and the model's serving profile.

The evaluator's parity check (EvaluationCompleted.parity) decides whether what was evaluated is
what will serve; a FAILED one blocks every promotion, automatic or explicit, and the reason is
recorded on the evaluation's decision. The merged release model the check produced is kept on
the checkpoint and announced with the adapter in ModelPromoted and ModelRolledBack, next to
the fingerprint the trainer recorded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.resources import model_to_proto
from services.registry.adapters.tables import CheckpointRow, ModelRow
from services.registry.domain import parse_model_name
from services.registry.validation import check_serving_profile, resolved_serving_profile
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, PreconditionViolation
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.registry.v1 import resources_pb2, service_pb2


def parity_failure(parity: common_pb2.ParityCheck) -> str:
    """Why a parity check FAILED, for the decision and the refusal; "" when it did not."""
    if parity.verdict != common_pb2.PARITY_VERDICT_FAILED:
        return ""
    reasons = [f.reason for f in parity.findings if f.verdict == common_pb2.PARITY_VERDICT_FAILED]
    return "parity failed: " + ("; ".join(reasons) or "no reason given")


def keep_merged_release(checkpoint: CheckpointRow, parity: common_pb2.ParityCheck) -> None:
    """The latest evaluation's merged release artifact becomes the checkpoint's (evaluations
    made before parity existed leave it as it is)."""
    if parity.verdict == common_pb2.PARITY_VERDICT_UNSPECIFIED:
        return
    record = resources_pb2.Checkpoint.FromString(checkpoint.record)
    record.merged_artifact_uri = parity.merged_artifact_uri
    record.merged_sha256 = parity.merged_sha256
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


def refuse_failed_parity(repo: RegistryRepository, checkpoint: CheckpointRow) -> None:
    """FAILED_PRECONDITION when the evaluation that passed the checkpoint failed parity."""
    passed = repo.latest_passed_evaluation(checkpoint.name)
    if passed is None:
        return
    reason = parity_failure(resources_pb2.CheckpointEvaluation.FromString(passed.record).parity)
    if reason:
        raise FailedPrecondition(
            f"{checkpoint.name} cannot be promoted: {reason}",
            [PreconditionViolation("PARITY_FAILED", checkpoint.name, reason)],
        )


def set_serving_profile(
    repo: RegistryRepository, request: service_pb2.SetServingProfileRequest, now: datetime
) -> resources_pb2.Model:
    """SetServingProfile: validate, store with the next revision (or clear), return the model."""
    parse_model_name(request.model, field="model")
    if request.HasField("serving_profile"):
        problems = check_serving_profile(request.serving_profile, "serving_profile")
        if problems:
            raise InvalidArgument("the serving profile is invalid", problems)
    row: ModelRow | None = repo.lock_model(request.model)
    if row is None:
        raise NotFound("model", request.model)
    definition = resources_pb2.Model.FromString(row.definition)
    if request.HasField("serving_profile"):
        revision = definition.serving_profile.revision + 1
        definition.serving_profile.CopyFrom(
            resolved_serving_profile(request.serving_profile, revision)
        )
    else:
        definition.ClearField("serving_profile")
    row.definition = definition.SerializeToString(deterministic=True)
    row.update_time = now
    return model_to_proto(row, repo.aliases_of_model(row.name))
