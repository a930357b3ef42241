"""What the registry keeps about a model: its aliases and actors, the enums of its records
(promotion policy, move trigger, review state, verdict) and the resource names ``models/{m}``,
``models/{m}/checkpoints/{c}``, ``models/{m}/aliases/{a}`` (with how a trainer checkpoint name
becomes a registry checkpoint id)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared import names

PRODUCTION = "production"
CANDIDATE = "candidate"
#: The alias id of ``ListAliasHistory`` that means "every alias of the model".
ALL_ALIASES = "-"

#: The actor recorded for moves the registry makes on its own (events).
SERVICE_ACTOR = "tuneline-registry"
#: The actor recorded for rollbacks caused by an Alertmanager webhook.
ALERTMANAGER_ACTOR = "alertmanager"


class PromotionPolicy(StrEnum):
    """How a model's checkpoints reach production."""

    AUTOMATIC = "AUTOMATIC"
    MANUAL = "MANUAL"


class MoveTrigger(StrEnum):
    """What moved an alias."""

    PROMOTION = "PROMOTION"
    APPROVAL = "APPROVAL"
    ROLLBACK_REGRESSION = "ROLLBACK_REGRESSION"
    ROLLBACK_ALERT = "ROLLBACK_ALERT"
    ROLLBACK_MANUAL = "ROLLBACK_MANUAL"
    MANUAL = "MANUAL"

    @property
    def is_rollback(self) -> bool:
        return self in _ROLLBACKS

    @property
    def marks_rolled_back(self) -> bool:
        """A rollback for a regression or an alert brands the checkpoint it leaves as bad."""
        return self in (MoveTrigger.ROLLBACK_REGRESSION, MoveTrigger.ROLLBACK_ALERT)

    @property
    def metric_label(self) -> str:
        """Short lower-case label for Prometheus (``regression``, ``alert``, ``manual`` …)."""
        return self.value.removeprefix("ROLLBACK_").lower()


_ROLLBACKS = frozenset(
    {MoveTrigger.ROLLBACK_REGRESSION, MoveTrigger.ROLLBACK_ALERT, MoveTrigger.ROLLBACK_MANUAL}
)


class ReviewState(StrEnum):
    """Where a checkpoint stands in manual review."""

    NOT_REQUIRED = "NOT_REQUIRED"
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class Verdict(StrEnum):
    """An evaluation's verdict (UNSPECIFIED: none yet)."""

    UNSPECIFIED = "UNSPECIFIED"
    PASSED = "PASSED"
    REGRESSED = "REGRESSED"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"
    FAILED = "FAILED"


# Names follow shared.names (MODEL, MODEL_CHECKPOINT, MODEL_ALIAS); these three have many
# callers, so they stay as the registry's short spellings of it.


def model_name(model_id: str) -> str:
    return names.MODEL.format(model=model_id)


def checkpoint_name(model_id: str, checkpoint_id: str) -> str:
    return names.MODEL_CHECKPOINT.format(model=model_id, checkpoint=checkpoint_id)


def alias_name(model_id: str, alias_id: str) -> str:
    return names.MODEL_ALIAS.format(model=model_id, alias=alias_id)


def parse_model_name(name: str, *, field: str = "name") -> str:
    """``models/{m}`` → ``m``; INVALID_ARGUMENT naming ``field`` otherwise."""
    return names.MODEL.parse(name, field=field)["model"]


def parse_checkpoint_name(name: str, *, field: str = "name") -> tuple[str, str]:
    """``models/{m}/checkpoints/{c}`` → ``(m, c)``."""
    model, checkpoint = names.MODEL_CHECKPOINT.ids(name, field=field)
    return model, checkpoint


def parse_alias_name(name: str, *, field: str = "name", allow_all: bool = False) -> tuple[str, str]:
    """``models/{m}/aliases/{a}`` → ``(m, a)``; ``a`` may be ``-`` when ``allow_all``."""
    pattern = names.ANY_MODEL_ALIAS if allow_all else names.MODEL_ALIAS
    model, alias = pattern.ids(name, field=field)
    return model, alias


def registry_checkpoint_id(source_checkpoint: str) -> str:
    """The registry's id for a trainer checkpoint: ``{job}.{checkpoint}``.

    Job and checkpoint ids never contain a dot (``^[a-z]([a-z0-9-]…)``), so the id is
    unambiguous and a person can still read which job and step it came from.
    """
    if not names.TRAINER_CHECKPOINT.matches(source_checkpoint):
        raise ValueError(f"{source_checkpoint!r} is not {names.TRAINER_CHECKPOINT.template}")
    return ".".join(names.TRAINER_CHECKPOINT.ids(source_checkpoint))


@dataclass(frozen=True)
class CheckpointFacts:
    """What the registry decides on from a registered checkpoint's record."""

    artifact_uri: str
    sha256: str
    training_job: str
    #: The trainer wrote it as its job was cancelled or failed: a partly trained adapter.
    training_interrupted: bool
    #: Who created its training job (four eyes: they may not approve it).
    job_creator: str
    #: ``None`` when it was never validated.
    validation_loss: float | None
