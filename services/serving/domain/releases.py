"""Releases of ``production`` and the table of what is served, swapped atomically.

A :class:`Release` is what the registry announced for one alias revision: the checkpoint, its
artifact and digest, and (when the trainer recorded one) its tokenizer fingerprint. The
:class:`ServingTable` decides whether a release is new (its revision is above the one loaded,
so a duplicate from Kafka and from WatchAlias, or an old event replayed, is ignored), holds the
model each request runs on, and swaps it under a lock: a request takes a reference to the
:class:`ServedModel` it started with, so requests in flight finish on the old model while new
ones see the new one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from shared.errors import FailedPrecondition, NotFound, PreconditionViolation, Unavailable
from shared.modeling.tokenizer_fingerprint import TokenizerFingerprintRecord
from shared.task_types import TaskType

#: Refused releases kept for GetServingState, newest first.
REFUSALS_KEPT = 20


def fingerprint_differences(
    announced: TokenizerFingerprintRecord, loaded: TokenizerFingerprintRecord
) -> list[str]:
    """How what is loaded differs from what the registry announced (empty: it matches).

    Only what the announcement states is compared: an empty digest or a 0 length there means
    "not recorded", never "must be empty".
    """
    differences = []
    if announced.tokenizer_sha256 and announced.tokenizer_sha256 != loaded.tokenizer_sha256:
        differences.append(
            f"tokenizer_sha256 is {loaded.tokenizer_sha256 or '(none)'}, "
            f"announced {announced.tokenizer_sha256}"
        )
    if announced.tokenizer_sha256 and (
        announced.chat_template_sha256 != loaded.chat_template_sha256
    ):
        differences.append(
            f"chat_template_sha256 is {loaded.chat_template_sha256 or '(none)'}, "
            f"announced {announced.chat_template_sha256 or '(none)'}"
        )
    if announced.end_of_turn_token_ids and set(announced.end_of_turn_token_ids) != set(
        loaded.end_of_turn_token_ids
    ):
        differences.append(
            f"end_of_turn_token_ids are {sorted(loaded.end_of_turn_token_ids)}, "
            f"announced {sorted(announced.end_of_turn_token_ids)}"
        )
    if (
        announced.max_sequence_length
        and announced.max_sequence_length != loaded.max_sequence_length
    ):
        differences.append(
            f"max_sequence_length is {loaded.max_sequence_length}, "
            f"announced {announced.max_sequence_length}"
        )
    return differences


@dataclass(frozen=True)
class Release:
    """One ``production`` revision of a model, as the registry announced it."""

    model: str  # models/{m}
    checkpoint: str  # models/{m}/checkpoints/{c}
    revision: int
    artifact_uri: str
    sha256: str
    task: TaskType
    source_checkpoint: str = ""
    tokenizer_fingerprint: TokenizerFingerprintRecord | None = None
    merged_artifact_uri: str = ""
    merged_sha256: str = ""
    #: ``event`` (Kafka) or ``watch`` (WatchAlias): which path told us first.
    announced_by: str = "event"


class RefusalReason(StrEnum):
    """Why a release was not loaded (a metric label: keep the set small)."""

    SHA256_MISMATCH = "sha256_mismatch"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    ARTIFACT_UNAVAILABLE = "artifact_unavailable"
    LOAD_FAILED = "load_failed"
    TASK_MISMATCH = "task_mismatch"


#: Refusals that the same bytes would earn again: never retried for the same revision.
PERMANENT_REFUSALS = frozenset(
    {
        RefusalReason.SHA256_MISMATCH,
        RefusalReason.FINGERPRINT_MISMATCH,
        RefusalReason.LOAD_FAILED,
        RefusalReason.TASK_MISMATCH,
    }
)


class ReleaseRefused(Exception):
    """A release that must not serve; the model served before keeps serving."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Generation:
    """A greedy completion: its text, tokens generated and whether an end-of-turn ended it."""

    text: str
    token_count: int
    ended_turn: bool


class InferenceModel(Protocol):
    """A loaded checkpoint, as the handlers use it (the torch engine implements it)."""

    @property
    def task(self) -> TaskType: ...

    @property
    def labels(self) -> Sequence[str]: ...

    @property
    def device(self) -> str: ...

    def classify(self, text: str) -> Sequence[float]:
        """Every label's probability, in ``labels`` order."""
        ...

    def generate(self, prompt: str, max_new_tokens: int) -> Generation: ...

    def fingerprint(self) -> TokenizerFingerprintRecord:
        """The tokenizer fingerprint of what was loaded, to compare with the announcement."""
        ...


@dataclass(frozen=True)
class ServedModel:
    """A release with its loaded model: what a request runs on, start to finish."""

    release: Release
    model: InferenceModel
    load_time: datetime


@dataclass(frozen=True)
class RefusedRelease:
    release: Release
    reason: RefusalReason
    message: str
    refuse_time: datetime


class FollowDecision(StrEnum):
    """What to do with an announced release."""

    LOAD = "load"
    #: Its revision is not above the one loaded (or refused for good): a duplicate or replay.
    STALE = "stale"
    #: This instance does not follow the model.
    NOT_FOLLOWED = "not_followed"


class ModelNotServed(NotFound):
    def __init__(self, model: str) -> None:
        super().__init__("served model", model)


class NoModelLoaded(Unavailable):
    """A followed model has no checkpoint loaded yet (never promoted, or still loading)."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"{model} is followed but no production checkpoint is loaded yet",
            metadata={"model": model},
        )


class WrongTaskType(FailedPrecondition):
    def __init__(self, model: str, task: TaskType, method: str) -> None:
        super().__init__(
            f"{model} is a {task.value} model; {method} does not apply",
            [PreconditionViolation("TASK_TYPE", model, f"{method} needs another task type")],
        )


@dataclass
class _Followed:
    served: ServedModel | None = None
    #: The model swapped out last, kept so a rollback to it swaps back without reloading.
    previous: ServedModel | None = None
    #: Highest revision refused for a reason the same bytes would earn again.
    refused_revision: int = 0
    load_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def revision(self) -> int:
        loaded = self.served.release.revision if self.served else 0
        return max(loaded, self.refused_revision)


class ServingTable:
    """The models this instance follows and what each serves now.

    ``models`` lists the followed models; empty means every model a release is announced for.
    """

    def __init__(self, models: Sequence[str] = ()) -> None:
        self._follow_any = not models
        self._lock = threading.Lock()
        self._models: dict[str, _Followed] = {name: _Followed() for name in models}
        self._refusals: deque[RefusedRelease] = deque(maxlen=REFUSALS_KEPT)

    def follow(self, model: str) -> bool:
        """Follow ``model`` (when this instance follows any); whether it is followed."""
        with self._lock:
            if model not in self._models and self._follow_any:
                self._models[model] = _Followed()
            return model in self._models

    def followed(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def loaded_revision(self, model: str) -> int:
        with self._lock:
            entry = self._models.get(model)
            return entry.revision if entry else 0

    def decide(self, release: Release) -> FollowDecision:
        if not self.follow(release.model):
            return FollowDecision.NOT_FOLLOWED
        with self._lock:
            entry = self._models[release.model]
            return (
                FollowDecision.LOAD if release.revision > entry.revision else FollowDecision.STALE
            )

    @contextmanager
    def loading(self, model: str) -> Iterator[None]:
        """Serialise the loads of one model (Kafka and the watcher may announce at once);
        decide again inside: the other path may have loaded the same revision meanwhile."""
        self.follow(model)
        with self._lock:
            lock = self._models[model].load_lock
        with lock:
            yield

    def previous_for(self, release: Release) -> ServedModel | None:
        """The model swapped out last, when it is exactly this release's artifact."""
        with self._lock:
            entry = self._models.get(release.model)
            previous = entry.previous if entry else None
        if (
            previous is not None
            and previous.release.checkpoint == release.checkpoint
            and previous.release.sha256 == release.sha256
            and previous.release.artifact_uri == release.artifact_uri
        ):
            return previous
        return None

    def swap(self, served: ServedModel) -> ServedModel | None:
        """Make ``served`` the model of new requests, atomically; returns the one it replaced
        (requests holding it finish on it)."""
        with self._lock:
            entry = self._models.setdefault(served.release.model, _Followed())
            replaced = entry.served
            entry.served = served
            entry.previous = replaced
            return replaced

    def refuse(self, release: Release, refusal: ReleaseRefused, at: datetime) -> None:
        with self._lock:
            entry = self._models.setdefault(release.model, _Followed())
            if refusal.reason in PERMANENT_REFUSALS:
                entry.refused_revision = max(entry.refused_revision, release.revision)
            self._refusals.appendleft(RefusedRelease(release, refusal.reason, refusal.message, at))

    def current(self, model: str) -> ServedModel:
        """The model a new request for ``model`` runs on."""
        with self._lock:
            entry = self._models.get(model)
            if entry is None:
                raise ModelNotServed(model)
            if entry.served is None:
                raise NoModelLoaded(model)
            return entry.served

    def served(self) -> list[ServedModel]:
        with self._lock:
            return [
                entry.served
                for _name, entry in sorted(self._models.items())
                if entry.served is not None
            ]

    def refusals(self) -> list[RefusedRelease]:
        with self._lock:
            return list(self._refusals)
