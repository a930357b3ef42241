"""What the handlers answer with: a model, a checkpoint, an alias and a move of an alias, as the
registry holds them now.

The parts the registry decides on are typed values; the definition a model was created with and
the record a checkpoint was registered with are kept as the stored bytes (a ``Model`` and a
``Checkpoint`` message of the contract), which only the converters in ``adapters/protos.py``
open: the registry stores them as given and answers with them, it does not interpret them here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.registry.domain.model import MoveTrigger, ReviewState, Verdict, alias_name


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias (a row of its history)."""

    model: str
    alias: str
    revision: int
    from_checkpoint: str
    to_checkpoint: str
    trigger: MoveTrigger
    actor: str
    reason: str
    cause: str
    trigger_time: datetime
    move_time: datetime

    @property
    def alias_name(self) -> str:
        """``models/{m}/aliases/{a}``."""
        return alias_name(self.model.removeprefix("models/"), self.alias)


@dataclass(frozen=True)
class Alias:
    """An alias as a serving fleet reads it: where it points, and what to load from there.

    ``revision`` is 0 and ``checkpoint`` empty for an alias never set.
    """

    model: str
    alias: str
    checkpoint: str
    revision: int
    last_move: AliasMove | None
    #: The stored record of the checkpoint it points at (what to load); ``None`` when unset.
    checkpoint_record: bytes | None

    @property
    def name(self) -> str:
        """``models/{m}/aliases/{a}``."""
        return alias_name(self.model.removeprefix("models/"), self.alias)


@dataclass(frozen=True)
class AutomationFreeze:
    """The rollback circuit breaker stopped automation from moving the model's production."""

    reason: str
    cause: str
    automatic_rollbacks: int
    freeze_time: datetime


@dataclass(frozen=True)
class Model:
    """A registered model: its stored definition, where its aliases point, whether it is frozen."""

    name: str
    #: The ``Model`` message CreateModel validated and stored (serving profile included).
    definition: bytes
    production_checkpoint: str
    candidate_checkpoint: str
    create_time: datetime
    update_time: datetime
    automation_freeze: AutomationFreeze | None


@dataclass(frozen=True)
class CheckpointEvaluation:
    """One evaluation attached to a checkpoint, with what the registry decided on it."""

    #: The stored ``CheckpointEvaluation`` message.
    record: bytes
    decision: str
    decision_reason: str


@dataclass(frozen=True)
class Checkpoint:
    """A registered checkpoint: its stored record plus the registry's verdict, review and
    aliases."""

    name: str
    #: The ``Checkpoint`` message written when CheckpointReady registered it (lineage, cost …).
    record: bytes
    evaluations: tuple[CheckpointEvaluation, ...]
    verdict: Verdict
    review_state: ReviewState
    reviewer: str
    review_reason: str
    review_time: datetime | None
    #: The aliases pointing at it, sorted.
    aliases: tuple[str, ...]
    ever_production: bool
    rolled_back: bool
    create_time: datetime
