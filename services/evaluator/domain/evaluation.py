"""Evaluations as the service keeps them: what is judged, against what, and how it ended.

An evaluation is created QUEUED (by a CheckpointReady event or by EvaluateCheckpoint), runs in
the worker (RUNNING), and ends SUCCEEDED with a verdict of PASSED, REGRESSED or
INSUFFICIENT_DATA, or FAILED with a reason. A run interrupted by a restart goes back to QUEUED.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from services.evaluator.domain.data_checks import DataChecks
from services.evaluator.domain.gate import (
    GatePolicy,
    GateResult,
    MetricComparison,
    MetricValue,
    Verdict,
)
from services.evaluator.domain.parity import ParityResult, ServingProfileSpec
from shared import names
from shared.errors import FieldViolation, InvalidArgument
from shared.local_paths import without_local_paths
from shared.task_types import TaskType


class EvaluationState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (EvaluationState.SUCCEEDED, EvaluationState.FAILED)


class FailureReason(StrEnum):
    """Why an evaluation broke (mirrors ``EvaluationFailureReason``)."""

    CHECKPOINT_UNAVAILABLE = "CHECKPOINT_UNAVAILABLE"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    DATA_UNAVAILABLE = "DATA_UNAVAILABLE"
    BASELINE_UNAVAILABLE = "BASELINE_UNAVAILABLE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    INTERNAL = "INTERNAL"


class EvaluationFailed(Exception):
    """An evaluation cannot finish; carries the reason the evaluation is failed with."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class DependencyUnavailable(Exception):
    """Something the evaluation needs is not there yet (the registry did not answer, the
    SplitCreated of its evaluation set has not arrived): worth trying again later. If it is
    still missing after the service's wait, the evaluation fails with ``reason``."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class UnknownToRegistry(Exception):
    """The registry answered that a model or checkpoint does not exist (final, not retried)."""

    def __init__(self, resource_type: str, name: str) -> None:
        super().__init__(f"the registry has no {resource_type} {name!r}")
        self.resource_type = resource_type
        self.name = name


class BaselineKind(StrEnum):
    PRODUCTION_CHECKPOINT = "PRODUCTION_CHECKPOINT"
    BASE_MODEL = "BASE_MODEL"
    EXPLICIT_CHECKPOINT = "EXPLICIT_CHECKPOINT"


class CheckpointSelection(StrEnum):
    """Which checkpoints a CheckpointReady event evaluates.

    BEST_AT_END (the default) evaluates one checkpoint per job, once it has ended: its best by
    validation loss, which is what should be promoted (see :func:`best_at_end`). The others
    decide per checkpoint as it is announced (:meth:`selects`).
    """

    ALL = "ALL"
    BEST_AND_FINAL = "BEST_AND_FINAL"
    FINAL = "FINAL"
    NONE = "NONE"
    BEST_AT_END = "BEST_AT_END"

    def selects(self, *, is_best: bool, is_final: bool) -> bool:
        """Whether a checkpoint is evaluated as it is announced (BEST_AT_END: never alone)."""
        if self is CheckpointSelection.ALL:
            return True
        if self is CheckpointSelection.BEST_AND_FINAL:
            return is_best or is_final
        if self is CheckpointSelection.FINAL:
            return is_final
        return False

    def reason(self, checkpoint: CheckpointRef) -> str:
        """Why :meth:`selects` took ``checkpoint``, in words."""
        if checkpoint.is_final:
            return f"the job's final checkpoint, step {checkpoint.step} (selection {self.value})"
        if self is CheckpointSelection.BEST_AND_FINAL:
            return (
                f"the job's best checkpoint by validation loss when written, step "
                f"{checkpoint.step} (selection {self.value})"
            )
        return f"checkpoint of step {checkpoint.step} (selection {self.value}: every one)"


class SplitPart(StrEnum):
    TRAIN = "TRAIN"
    VALIDATION = "VALIDATION"
    TEST = "TEST"


# -- names -----------------------------------------------------------------------------------


def new_evaluation_name() -> str:
    # "e-" first: the id rule wants a letter first, and a uuid's hex may begin with a digit
    return names.EVALUATION.format(evaluation=f"e-{uuid.uuid4().hex[:20]}")


# -- what is evaluated, and on what ------------------------------------------------------------


@dataclass(frozen=True)
class BaseModelRef:
    """A base model as the contracts name it: a folder name in the models root, or a path."""

    model_name: str = ""
    model_path: str = ""
    files_sha256: str = ""
    revision: str = ""
    architecture: str = ""

    @property
    def display(self) -> str:
        return self.model_name or self.model_path


@dataclass(frozen=True)
class EvaluationSet:
    """A pinned evaluation set: a dataset version, optionally one part of one of its splits."""

    dataset_version: str
    split: str = ""
    part: SplitPart = SplitPart.VALIDATION
    #: Empty for the model's primary set; the golden set's label otherwise.
    label: str = ""

    @property
    def key(self) -> str:
        """Identifies the exact examples: the version of the evaluation set."""
        if not self.split:
            return self.dataset_version
        return f"{self.split}#{self.part.value.lower()}"


@dataclass(frozen=True)
class CheckpointRef:
    """A trainer checkpoint as announced by CheckpointReady."""

    name: str
    sha256: str
    artifact_uri: str
    training_job: str
    target_model: str
    step: int
    is_best: bool
    is_final: bool
    task_type: TaskType | None
    base_model: BaseModelRef
    #: The trainer's ``Lineage`` message, serialized; passed through to events untouched.
    lineage: bytes = b""
    #: Validation loss at this step; ``None`` when not validated here.
    validation_loss: float | None = None
    #: On a final checkpoint: the job's kept checkpoint with the lowest validation loss
    #: (empty from trainers that do not say, or on other checkpoints).
    best_checkpoint: str = ""


def _loss(checkpoint: CheckpointRef) -> str:
    if checkpoint.validation_loss is None:
        return "not validated"
    return f"validation loss {checkpoint.validation_loss:.4g}"


def best_at_end(final: CheckpointRef) -> str:
    """The checkpoint BEST_AT_END evaluates for the job whose final checkpoint is ``final``."""
    return final.best_checkpoint or final.name


def best_at_end_reason(chosen: CheckpointRef, final: CheckpointRef) -> str:
    """Why BEST_AT_END evaluates ``chosen`` for the job that ended with ``final``."""
    if chosen.name == final.name:
        if chosen.validation_loss is None:
            return (
                f"the job's final checkpoint, step {final.step}: the job has no validated "
                "checkpoint to prefer (selection BEST_AT_END)"
            )
        return (
            f"the job's best checkpoint by validation loss, which is its final one: step "
            f"{final.step}, {_loss(final)} (selection BEST_AT_END)"
        )
    return (
        f"the job's best checkpoint by validation loss: step {chosen.step}, {_loss(chosen)}; "
        f"the final checkpoint, step {final.step}, {_loss(final)} (selection BEST_AT_END)"
    )


@dataclass(frozen=True)
class RegisteredCheckpoint:
    """A checkpoint as the registry knows it (``models/{m}/checkpoints/{c}``): enough to load
    and score it as a baseline."""

    name: str
    sha256: str
    artifact_uri: str
    base_model: BaseModelRef


@dataclass(frozen=True)
class ModelSpec:
    """What the registry says about a model: what its checkpoints are judged on, and how."""

    name: str
    task_type: TaskType
    base_model: BaseModelRef
    evaluation_set: EvaluationSet
    golden_sets: tuple[EvaluationSet, ...]
    gate_policy: GatePolicy
    #: The serving engine's constraints the parity check lints against; None: no profile.
    serving_profile: ServingProfileSpec | None = None

    @property
    def evaluation_sets(self) -> tuple[EvaluationSet, ...]:
        return (self.evaluation_set, *self.golden_sets)


def evaluation_sets_key(sets: Sequence[EvaluationSet]) -> str:
    """One string naming every set's version, for "same checkpoint, same sets" look-ups."""
    return ";".join(f"{s.label}={s.key}" for s in sets)


@dataclass(frozen=True)
class ScoringConditions:
    """Where and how the engine computes: what changes the numbers besides the settings.

    The same adapter scored in bf16 on a GPU and in fp32 on a CPU, or under another torch,
    transformers or peft release, gives slightly different losses and can flip a prediction,
    so stored outcomes are only paired with outcomes computed under equal conditions.
    """

    device_type: str
    dtype: str
    torch_version: str
    transformers_version: str
    peft_version: str

    @property
    def key(self) -> str:
        return (
            f"device={self.device_type};dtype={self.dtype};torch={self.torch_version};"
            f"transformers={self.transformers_version};peft={self.peft_version}"
        )


@dataclass(frozen=True)
class ScoringSettings:
    """Engine settings that change the numbers (so results are only reused when equal)."""

    max_generation_examples: int
    max_new_tokens: int
    max_seq_length: int
    #: Where the engine computes; ``None`` lets the engine use its defaults (tests, benches),
    #: which then key stored outcomes as "conditions unknown".
    conditions: ScoringConditions | None = None

    def fingerprint(self, task_type: TaskType) -> str:
        """A short digest of what matters for ``task_type`` (generation: causal LM only)."""
        if task_type is TaskType.CLASSIFICATION:
            text = f"cls;len={self.max_seq_length}"
        else:
            text = (
                f"clm;len={self.max_seq_length};gen={self.max_generation_examples};"
                f"new={self.max_new_tokens}"
            )
        if self.conditions is not None:
            text += ";" + self.conditions.key
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ScoredSubject:
    """Something that can be scored on a set: a base model, plus an adapter or not.

    ``store_key`` is what stored outcomes are keyed by, with the evaluation set version:
    the adapter's sha256 for a checkpoint, the base model's files hash for a bare base model.
    """

    base_model: BaseModelRef
    adapter_sha256: str = ""
    adapter_uri: str = ""

    @property
    def store_key(self) -> str:
        if self.adapter_sha256:
            return f"checkpoint:{self.adapter_sha256}"
        return f"base:{self.base_model.files_sha256}"


@dataclass(frozen=True)
class BaselineChoice:
    """What a candidate is compared with, as decided when the evaluation starts."""

    kind: BaselineKind
    subject: ScoredSubject
    #: The registry's name of the baseline checkpoint; empty for BASE_MODEL.
    checkpoint: str = ""


@dataclass(frozen=True)
class Baseline:
    """The baseline of a finished evaluation and its metrics."""

    kind: BaselineKind
    checkpoint: str
    checkpoint_sha256: str
    base_model: BaseModelRef
    metrics: tuple[MetricValue, ...]
    reused: bool


# -- policy ----------------------------------------------------------------------------------

DEFAULT_MAX_GENERATION_EXAMPLES = 200
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class EvaluationPolicy:
    """How a model's checkpoints are evaluated, every default resolved."""

    model: str
    checkpoint_selection: CheckpointSelection
    max_generation_examples: int = DEFAULT_MAX_GENERATION_EXAMPLES
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = DEFAULT_BATCH_SIZE
    update_time: datetime | None = None

    @property
    def name(self) -> str:
        return f"{self.model}/evaluationPolicy"


def resolve_policy(
    model: str,
    *,
    checkpoint_selection: CheckpointSelection | None,
    max_generation_examples: int,
    max_new_tokens: int,
    batch_size: int,
    update_time: datetime | None,
) -> EvaluationPolicy:
    """Validate API-style values (0 = server default, unset selection = ALL) into a policy."""
    violations = []
    if max_generation_examples < 0:
        violations.append(
            FieldViolation(
                "evaluation_policy.max_generation_examples",
                f"{max_generation_examples} is negative; use 0 for the default",
                "OUT_OF_RANGE",
            )
        )
    if max_new_tokens < 0:
        violations.append(
            FieldViolation(
                "evaluation_policy.max_new_tokens",
                f"{max_new_tokens} is negative; use 0 for the default, or at least 1",
                "OUT_OF_RANGE",
            )
        )
    if batch_size < 0:
        violations.append(
            FieldViolation(
                "evaluation_policy.batch_size",
                f"{batch_size} is negative; use 0 for the default, or at least 1",
                "OUT_OF_RANGE",
            )
        )
    if violations:
        raise InvalidArgument("invalid evaluation policy", violations)
    return EvaluationPolicy(
        model=model,
        checkpoint_selection=checkpoint_selection or CheckpointSelection.ALL,
        max_generation_examples=max_generation_examples or DEFAULT_MAX_GENERATION_EXAMPLES,
        max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        batch_size=batch_size or DEFAULT_BATCH_SIZE,
        update_time=update_time,
    )


# -- the evaluation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of one checkpoint against one baseline; immutable, replaced per step."""

    name: str
    checkpoint: CheckpointRef
    model: str
    create_time: datetime
    state: EvaluationState = EvaluationState.QUEUED
    #: Set by EvaluateCheckpoint's ``baseline_checkpoint``: compare with this, not production.
    requested_baseline: str = ""
    request_id: str = ""
    #: Known once running (or at creation, for EvaluateCheckpoint, which asks the registry).
    task_type: TaskType | None = None
    evaluation_sets: tuple[EvaluationSet, ...] = ()
    gate_policy: GatePolicy | None = None
    verdict: Verdict | None = None
    metrics: tuple[MetricValue, ...] = ()
    baseline: Baseline | None = None
    comparisons: tuple[MetricComparison, ...] = ()
    failure_reason: FailureReason | None = None
    failure_message: str = ""
    example_count: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    #: Regressed comparisons, most severe first (kept for the RegressionDetected event).
    regressions: tuple[MetricComparison, ...] = field(default=())
    #: The rule that chose the checkpoint (``None``: asked for by EvaluateCheckpoint), and why.
    selection: CheckpointSelection | None = None
    selection_reason: str = ""
    #: Merged-vs-unmerged parity, profile lint and fingerprint check; None until checked.
    parity: ParityResult | None = None
    #: Contamination, coverage and shift of the primary set; None until checked.
    data_checks: DataChecks | None = None

    @property
    def primary_set(self) -> EvaluationSet | None:
        return self.evaluation_sets[0] if self.evaluation_sets else None

    @property
    def golden_sets(self) -> tuple[EvaluationSet, ...]:
        return self.evaluation_sets[1:]

    def started(self, now: datetime) -> Evaluation:
        """Claimed by the supervisor: RUNNING from now on."""
        if self.state is not EvaluationState.QUEUED:
            raise ValueError(f"cannot start an evaluation that is {self.state}")
        return replace(self, state=EvaluationState.RUNNING, start_time=now)

    def resolved(self, model: ModelSpec) -> Evaluation:
        """Pinned to the model's evaluation sets and gate as the registry states them now."""
        return replace(
            self,
            task_type=model.task_type,
            evaluation_sets=model.evaluation_sets,
            gate_policy=model.gate_policy,
        )

    def requeued(self) -> Evaluation:
        """Back to QUEUED after a restart interrupted the run (it is simply run again)."""
        return replace(self, state=EvaluationState.QUEUED, start_time=None)

    def succeeded(
        self,
        result: GateResult,
        baseline: Baseline,
        example_count: int,
        now: datetime,
        *,
        data_checks: DataChecks | None = None,
    ) -> Evaluation:
        """Terminal with the gate's verdict, as the data checks let it stand (a contaminated
        set cannot PASS: :meth:`DataChecks.applied_to`)."""
        verdict = result.verdict
        if data_checks is not None:
            verdict, data_checks = data_checks.applied_to(verdict)
        return replace(
            self,
            state=EvaluationState.SUCCEEDED,
            verdict=verdict,
            data_checks=data_checks,
            metrics=result.candidate_metrics,
            baseline=baseline,
            comparisons=result.comparisons,
            regressions=result.regressions,
            example_count=example_count,
            end_time=now,
        )

    def failed(
        self,
        reason: FailureReason,
        message: str,
        now: datetime,
        *,
        baseline: Baseline | None = None,
        example_count: int | None = None,
    ) -> Evaluation:
        return replace(
            self,
            state=EvaluationState.FAILED,
            verdict=Verdict.FAILED,
            failure_reason=reason,
            # for API clients: local paths quoted from torch, transformers or the OS are cut
            failure_message=without_local_paths(message)[:4000],
            baseline=baseline or self.baseline,
            example_count=self.example_count if example_count is None else example_count,
            start_time=self.start_time or now,
            end_time=now,
        )
