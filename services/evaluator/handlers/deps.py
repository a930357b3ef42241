"""What the evaluator's handlers are given: the clock, the registry they ask, the service
defaults and the :class:`EvaluatorDeps` the bootstrap builds once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from services.evaluator.adapters.metrics import EvaluatorMetrics
from services.evaluator.adapters.outcome_store import OutcomeArtifacts
from services.evaluator.adapters.repository import EvaluatorRepository
from services.evaluator.adapters.scoring import ScoringJob, ScoringResult
from services.evaluator.domain.data_checks import DataCheckPolicy
from services.evaluator.domain.evaluation import (
    CheckpointSelection,
    EvaluationPolicy,
    ModelSpec,
    RegisteredCheckpoint,
    ScoringConditions,
)
from shared.artifacts import ArtifactStore
from shared.running_claims import RunningClaims

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class RegistryLookup(Protocol):
    """What the evaluator asks the registry (see ``adapters.registry_gateway``)."""

    def model(self, name: str) -> ModelSpec: ...

    def production(self, model: str) -> RegisteredCheckpoint | None: ...

    def checkpoint(self, name: str) -> RegisteredCheckpoint: ...


@dataclass(frozen=True)
class ServiceDefaults:
    """What applies when a model has no evaluation policy, and service-wide scoring limits."""

    checkpoint_selection: CheckpointSelection = CheckpointSelection.BEST_AT_END
    max_seq_length: int = 512
    #: Rows of the primary set the parity check compares merged and unmerged on (0: none).
    parity_max_examples: int = 64
    #: Contamination, coverage and shift of the primary set against the training rows.
    data_checks: DataCheckPolicy = field(default_factory=DataCheckPolicy)


def effective_policy(
    repository: EvaluatorRepository, model: str, defaults: ServiceDefaults
) -> EvaluationPolicy:
    """The model's policy, or the service defaults when none was set."""
    return repository.policy(model) or EvaluationPolicy(
        model=model, checkpoint_selection=defaults.checkpoint_selection
    )


@dataclass
class EvaluatorDeps:
    """What the evaluator's handlers need to run evaluations; the bootstrap builds it once."""

    sessions: sessionmaker[Session]
    registry: RegistryLookup
    artifacts: ArtifactStore
    score: Callable[[ScoringJob], ScoringResult]
    source: str
    models_root: Path
    allowed_roots: Sequence[Path] = ()
    device: str | None = None
    defaults: ServiceDefaults = field(default_factory=ServiceDefaults)
    dependency_wait_seconds: float = 120.0
    metrics: EvaluatorMetrics | None = None
    clock: Clock = utc_now
    #: Which device, dtype and library versions the engine scores under (asked of the worker;
    #: part of the key of stored outcomes). ``None``: not known, as with fake scorers.
    conditions: Callable[[], ScoringConditions] | None = None
    #: Called after a commit that staged events (wakes the outbox relay).
    on_events_staged: Callable[[], None] = lambda: None
    #: Which RUNNING evaluations a live replica works on (PostgreSQL advisory locks), so a
    #: replica that starts re-queues only those whose replica is gone.
    claims: RunningClaims = field(default_factory=lambda: RunningClaims(None, "evaluations"))

    @property
    def outcome_artifacts(self) -> OutcomeArtifacts:
        return OutcomeArtifacts(self.artifacts)
