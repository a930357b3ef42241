"""What the supervisor asks of the evaluation engine, and what it gets back (torch-free).

A :class:`ScoringJob` names models (:class:`SubjectSpec`: a base model, with or without an
adapter) and evaluation sets (:class:`RowSource`: where their rows are, with digests); the
engine scores every subject on every set and returns per-example outcomes. The job and its
result cross a process boundary (the worker), so both are plain picklable dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from services.evaluator.adapters.parity_job import ParityJob, ParityMeasured
from services.evaluator.domain.data_checks import DataCheckPolicy, DataChecks
from services.evaluator.domain.evaluation import (
    BaseModelRef,
    FailureReason,
    ScoringSettings,
)
from services.evaluator.domain.outcomes import ExampleOutcomes
from shared.task_types import TaskType


class SubjectRole(StrEnum):
    """Whose failure it is when a subject cannot be scored."""

    CANDIDATE = "candidate"
    BASELINE = "baseline"


@dataclass(frozen=True)
class RowSource:
    """Where one evaluation set's rows are.

    With a ``manifest_path`` the rows are the manifest's ``part`` (``train``, ``validation``,
    ``test``); without one, every row of the dataset JSONL. Both files are checked against
    their sha256 before use.
    """

    set_key: str
    dataset_path: str
    dataset_sha256: str
    manifest_path: str = ""
    manifest_sha256: str = ""
    part: str = "validation"


@dataclass(frozen=True)
class DataChecksJob:
    """Compare the job's primary set with the candidate's training rows (``adapters.data_checks``).

    ``training`` is the train part of the split named by the candidate's lineage.
    """

    training: RowSource
    training_split: str
    policy: DataCheckPolicy


@dataclass(frozen=True)
class SubjectSpec:
    """A model to score: ``base_model``, plus the adapter folder at ``adapter_path`` if any."""

    subject_key: str
    role: SubjectRole
    base_model: BaseModelRef
    adapter_path: str = ""


@dataclass(frozen=True)
class ScoringJob:
    """Score every subject on every set."""

    evaluation: str
    task_type: TaskType
    subjects: tuple[SubjectSpec, ...]
    sets: tuple[RowSource, ...]
    #: What changes the numbers (and so keys stored outcomes).
    scoring: ScoringSettings
    #: Examples per forward batch.
    batch_size: int
    models_root: str
    allowed_roots: tuple[str, ...] = ()
    device: str | None = None
    #: Upper bound on padded tokens per forward batch (the logits of a large vocabulary are
    #: big: 8192 positions x 49k classes is 1.6 GB in fp32).
    max_batch_tokens: int = 4096
    #: Also measure the candidate's merged-versus-unmerged parity (see ``adapters.parity``).
    parity: ParityJob | None = None
    #: Also check the primary set for contamination, coverage and shift.
    data_checks: DataChecksJob | None = None


@dataclass(frozen=True)
class ConditionsRequest:
    """Ask the engine which :class:`ScoringConditions` it would score under on ``device``."""

    device: str | None = None


@dataclass
class ScoringResult:
    """Outcomes per (subject key, set key), and where and how fast they were computed."""

    outcomes: dict[tuple[str, str], ExampleOutcomes]
    device: str
    seconds: float
    examples_scored: int
    load_seconds: float = 0.0
    #: Wall-clock seconds per subject key, loading included.
    subject_seconds: dict[str, float] = field(default_factory=dict)
    #: The candidate's parity numbers, when the job asked for them.
    parity: ParityMeasured | None = None
    #: The data checks, when the job asked for them.
    data_checks: DataChecks | None = None


class ScoringFailed(Exception):
    """The engine could not score the job; ``reason`` is the evaluation's failure reason."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[ScoringFailed], tuple[FailureReason, str]]:
        # crosses the worker's pipe: rebuild from both arguments
        return (ScoringFailed, (self.reason, self.message))
