"""The registry's commands as its handlers take them: what an RPC asks for, without the wire format.

The gRPC servicer builds them from the requests (``adapters/protos.py``); the handlers check
their fields (bounded text, names, revisions) and act on them. An optional field the request may
leave unset is ``None`` here, never a zero that means something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.registry.domain.model import ReviewState, Verdict


@dataclass(frozen=True)
class CreateModel:
    """Register a model under ``model_id``.

    ``definition`` is the requested ``Model`` message as sent (``None`` when the request has
    none): its many nested parts are checked by field path and stored as given, with defaults
    resolved, by ``adapters/model_definition.py``; the registry does not otherwise read them.
    """

    model_id: str
    definition: bytes | None
    request_id: str = ""
    #: The verified caller ("" on a server without auth), kept for four-eyes approval.
    creator: str = ""


@dataclass(frozen=True)
class SetServingProfile:
    """Set (``None``: clear) the serving profile of a model; it gets the next revision.

    ``serving_profile`` is the requested ``ServingProfile`` message as sent, checked and stored
    in the model's definition by ``adapters/model_definition.py``.
    """

    model: str
    serving_profile: bytes | None


@dataclass(frozen=True)
class PromoteCheckpoint:
    """Move an alias (``production`` when empty) to a checkpoint that passed."""

    checkpoint: str
    alias: str = ""
    reason: str = ""
    actor: str = ""
    request_id: str = ""
    #: Refuse (ABORTED) unless the alias is at this revision; ``None``: no check.
    expected_alias_revision: int | None = None


@dataclass(frozen=True)
class ApproveCheckpoint:
    """Approve a checkpoint pending review, which promotes it to production."""

    checkpoint: str
    reviewer: str
    reason: str
    request_id: str = ""
    #: Refuse (ABORTED) unless production is at this revision; ``None``: no check.
    expected_alias_revision: int | None = None


@dataclass(frozen=True)
class RejectCheckpoint:
    """Reject a checkpoint pending review; no alias moves."""

    checkpoint: str
    reviewer: str
    reason: str
    request_id: str = ""


@dataclass(frozen=True)
class RollbackModel:
    """Roll a model's production back (to ``target_checkpoint`` when set)."""

    model: str
    reason: str
    actor: str = ""
    request_id: str = ""
    target_checkpoint: str = ""
    #: Refuse (ABORTED) unless production is at this revision; ``None``: no check.
    expected_alias_revision: int | None = None


@dataclass(frozen=True)
class UnfreezeAutomation:
    """Let automation move a model's production again after the rollback breaker froze it."""

    model: str
    reason: str
    actor: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class ReportLiveQuality:
    """A live measurement of a model's production checkpoint (a bare value, or counts)."""

    model: str
    metric: str
    value: float = 0.0
    #: The checkpoint measured; empty: whatever is in production.
    checkpoint: str = ""
    slice: str = ""
    example_count: int = 0
    successes: int = 0
    trials: int = 0
    #: The span the measurement covers; ``None`` when the report does not say.
    window: timedelta | None = None
    source: str = ""
    request_id: str = ""
    #: When it was measured; ``None``: now.
    report_time: datetime | None = None


@dataclass(frozen=True)
class CheckpointQuery:
    """One page of a model's checkpoints, newest first, optionally filtered."""

    parent: str
    page_size: int = 0
    page_token: str = ""
    verdict: Verdict | None = None
    review_state: ReviewState | None = None
    training_job: str = ""


@dataclass(frozen=True)
class AliasHistoryQuery:
    """One page of an alias's moves (``-`` as the alias id: every alias of the model)."""

    name: str
    page_size: int = 0
    page_token: str = ""
