"""What the registry takes from the trainer's and the evaluator's events: a checkpoint to register
(CheckpointReady) and an evaluation to attach (EvaluationCompleted), and the rule that a
checkpoint trained on another base model than its model's is refused.

The subscriptions convert each event here (``adapters/protos.py``). The parts the registry
decides on are typed values; the record the registry stores for it (the checkpoint's lineage,
cost and losses; the evaluation's metrics, comparisons and parity check) and the event as it
arrived (kept when it is parked or refused) stay the bytes they are: the registry stores them,
it does not read them here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.registry.domain.model import Verdict
from services.registry.domain.promotion import Comparison
from shared.task_types import TaskType


@dataclass(frozen=True)
class BaseModelSource:
    """Where a base model comes from and the fingerprint of its files."""

    #: Which source names it (``model_name`` or ``model_path``); ``None`` when none is said.
    source: str | None
    value: str
    files_sha256: str

    def value_of(self, source: str) -> str:
        """The value of ``source`` ("" when this base model is named by another)."""
        return self.value if self.source == source else ""


def base_model_mismatch(model_base: BaseModelSource, lineage_base: BaseModelSource) -> str:
    """Why a checkpoint's base model is not the model's, or ``""`` when it is."""
    source = model_base.source
    if lineage_base.source is None:
        return ""  # the trainer always sets it; an older producer may not: don't refuse on that
    if source and model_base.value != lineage_base.value_of(source):
        return (
            f"trained on {lineage_base.source}={lineage_base.value!r}, "
            f"the model's base is {source}={model_base.value!r}"
        )
    if (
        model_base.files_sha256
        and lineage_base.files_sha256
        and model_base.files_sha256 != lineage_base.files_sha256
    ):
        return "the base model's files_sha256 differs from the model's"
    return ""


@dataclass(frozen=True)
class ReadyCheckpoint:
    """CheckpointReady: a checkpoint the trainer wrote for a model, to register under it."""

    #: ``models/{m}`` as the trainer was told (not checked yet).
    target_model: str
    #: The trainer's name of the checkpoint.
    checkpoint: str
    training_job: str
    artifact_uri: str
    sha256: str
    #: Whether the lineage states a task type at all (``task_type`` is ``None`` when it does
    #: not, and when it states one this contract does not define).
    task_type_stated: bool
    task_type: TaskType | None
    #: The base model it was trained on, as its lineage says.
    base_model: BaseModelSource
    #: When the trainer wrote it; ``None`` when the event does not say.
    event_time: datetime | None
    #: The registry's record of it (a ``Checkpoint`` message) without its registry name.
    record: bytes
    #: The event as it arrived, kept when it is parked or refused.
    payload: bytes


@dataclass(frozen=True)
class MergedRelease:
    """The merged release model a parity check produced ("" when none)."""

    artifact_uri: str
    sha256: str


@dataclass(frozen=True)
class CompletedEvaluation:
    """EvaluationCompleted: an evaluation of a checkpoint, to attach and act on."""

    model: str
    #: The trainer's name of the evaluated checkpoint.
    checkpoint: str
    evaluation: str
    verdict: Verdict
    comparisons: tuple[Comparison, ...]
    #: The checkpoint compared with (a registry or a trainer name; "" with ``baseline_sha256``
    #: only when the evaluator knew just the artifact); ``None`` when it was the base model.
    baseline_checkpoint: str | None
    baseline_sha256: str
    #: When it completed; ``None`` when the event does not say.
    event_time: datetime | None
    #: Whether a parity check ran (evaluations made before parity existed have none).
    parity_checked: bool
    #: Why the parity check FAILED, "" when it did not.
    parity_failure: str
    merged_release: MergedRelease
    #: The registry's record of it (a ``CheckpointEvaluation`` message) without the baseline's
    #: registry name.
    record: bytes
    #: The event as it arrived, kept when it is parked or refused, and what the evaluator is
    #: asked to confirm.
    payload: bytes
