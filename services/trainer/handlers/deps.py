"""What the trainer's handlers need besides the session: the ports to other services and to the
models on disk, and :class:`TrainerDeps`, which carries them (and the sessions the entrypoints
open transactions from)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from services.trainer.adapters.repository import Pricing
from services.trainer.domain.config import BaseModelRef
from services.trainer.domain.costs import Budget
from services.trainer.domain.jobs import SplitInfo
from shared.modeling import ResolvedModel


class Models(Protocol):
    """Resolves base models (see :class:`services.trainer.adapters.models.ModelCatalog`)."""

    def resolve(self, ref: BaseModelRef) -> ResolvedModel: ...

    def max_length(self, model: ResolvedModel) -> int | None: ...


class SplitLookup(Protocol):
    """Asks the splitter about a split (None: unknown; LookupError: cannot ask)."""

    def fetch(self, name: str) -> SplitInfo | None: ...


class TargetModels(Protocol):
    """Asks the registry about a model: None when it does not exist, else its budget (empty
    when it has none); LookupError when the registry cannot be asked. See
    :class:`services.trainer.adapters.registry.RegistryModels`."""

    def lookup(self, name: str) -> Budget | None: ...


class TokenCounter(Protocol):
    """Counts a split's train tokens as training encodes them (see
    :class:`services.trainer.adapters.token_counts.SplitTokenCounter`); raises
    ``DataUnavailable`` when the split's files cannot be read."""

    def train_tokens(
        self, split: SplitInfo, model: ResolvedModel, max_length: int
    ) -> TrainTokenCount: ...


class TrainTokenCount(Protocol):
    @property
    def examples(self) -> int: ...

    @property
    def tokens(self) -> int: ...


@dataclass(frozen=True)
class TrainerDeps:
    """What handlers need besides the session, and the sessions the entrypoints open it from
    (the servicer, the subscriptions' consumer and the supervisor own every transaction)."""

    sessions: sessionmaker[Session]
    models: Models
    pricing: Pricing
    source: str
    software_versions: dict[str, str]
    splits: SplitLookup | None = None
    #: None: target models are not checked (handler tests about other things).
    target_models: TargetModels | None = None
    #: None: CreateTrainingJob with ``validate_only`` is refused as unavailable.
    token_counter: TokenCounter | None = None
    #: Throughput an estimate assumes with no earlier run to measure (deliberately low).
    default_tokens_per_device_second: float = 100.0
    #: Fixed device time per run an estimate assumes with no earlier run to measure it.
    default_overhead_device_seconds: float = 0.0
    #: Policies make a split's jobs only once its dataset version's ``DatasetAudited`` arrived
    #: (the service's default); False makes them on ``SplitCreated`` (handler tests).
    wait_for_dataset_audit: bool = False
