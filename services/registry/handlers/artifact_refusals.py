"""Checks of a checkpoint's artifact at its source before it is registered or moved."""

from __future__ import annotations

import logging

from services.registry.adapters import protos
from services.registry.adapters.artifact_checks import CONTENT
from services.registry.adapters.tables import CheckpointRow
from services.registry.handlers.deps import RegistryDeps
from shared.errors import FailedPrecondition, PreconditionViolation

log = logging.getLogger(__name__)


def artifact_refused(deps: RegistryDeps, model: str, checkpoint: str, check: str, why: str) -> None:
    """Log and count an artifact the registry will not trust (counted at once: a refused
    promotion rolls its transaction back, and the refusal still happened)."""
    log.error(
        "checkpoint artifact refused",
        extra={"model": model, "checkpoint": checkpoint, "check": check, "why": why},
    )
    if deps.metrics:
        deps.metrics.artifacts_refused.labels(model.removeprefix("models/"), check).inc()


def unverified_artifact(deps: RegistryDeps, checkpoint: CheckpointRow) -> str:
    """Why the checkpoint's artifact is not the one its record names (re-hashed now), or ""."""
    if deps.artifacts is None:
        return ""
    facts = protos.checkpoint_facts(checkpoint)
    problem = deps.artifacts.content_problem(facts.artifact_uri, facts.sha256)
    if problem:
        artifact_refused(deps, checkpoint.model, checkpoint.name, CONTENT, problem)
    return problem


def refuse_unverified_artifact(deps: RegistryDeps, checkpoint: CheckpointRow) -> None:
    """FAILED_PRECONDITION unless the checkpoint's artifact re-hashes to its recorded sha256."""
    problem = unverified_artifact(deps, checkpoint)
    if problem:
        raise FailedPrecondition(
            f"{checkpoint.name} cannot be promoted: its artifact failed verification: {problem}",
            [PreconditionViolation("ARTIFACT_UNVERIFIED", checkpoint.name, problem)],
        )
