"""What the demo found: one result per step of the story, the summary, and the one-line readings
of the pipeline's messages they are written from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.demo.timeline import SeenEvent
from tuneline.evaluator.v1 import resources_pb2 as evaluator_pb2
from tuneline.registry.v1 import resources_pb2 as registry_pb2


@dataclass
class RoundResult:
    """One pushed dataset version and everything the pipeline did with it."""

    label: str
    dataset_version: str = ""
    rows: int = 0
    content_sha256: str = ""
    split: str = ""
    train_rows: int = 0
    validation_rows: int = 0
    training_job: str = ""
    steps: int = 0
    loss_trend: list[tuple[int, float | None, float | None]] = field(default_factory=list)
    device_seconds: float = 0.0
    cost: str = ""
    checkpoint: str = ""
    #: The checkpoint the evaluator judged (and the registry promoted): the job's best one by
    #: validation loss (the evaluator's default BEST_AT_END selection), else its final one.
    evaluated_checkpoint: str = ""
    registry_checkpoint: str = ""
    verdict: str = ""
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    baseline: str = ""
    promoted: bool = False
    regression: str = ""
    #: The version's label audit in one line (see :func:`~tuneline.demo.rounds.label_audit`).
    audit: str = ""
    #: The evaluator's data checks of the evaluation set against the round's training split.
    data_checks: str = ""
    seconds: float = 0.0


@dataclass
class BlockedVersion:
    """A version its label audit blocked: stored, split, but never trained."""

    dataset_version: str
    rows: int
    #: The label-churn finding that refused the same rows before the override.
    churn_refusal: str
    #: The audit's verdict (BLOCKED), numbers and rule, as DatasetAudited announced them.
    verdict: str
    noise_rate: float
    max_noise_rate: float
    suspected_count: int
    audit_reason: str
    #: The audit in one line, with its first suspected rows
    #: (see :func:`~tuneline.demo.rounds.label_audit`).
    audit: str
    split: str
    #: The training policy's job for the split: FAILED with LABEL_AUDIT_BLOCKED, never started.
    training_job: str
    failure_reason: str
    failure_message: str
    seconds: float = 0.0


@dataclass
class RollbackResult:
    from_checkpoint: str
    to_checkpoint: str
    trigger: str
    reason: str
    seconds_to_rollback: float


@dataclass
class LiveTrafficResult:
    """Live traffic through the serving service, from the bad model to the swap back."""

    checkpoint: str
    predictions: int
    #: Predictions the feedback said were wrong.
    bad_predictions: int
    #: From the first bad prediction to serving answering from the restored checkpoint.
    seconds_to_swap_back: float | None = None
    swapped_back_to: str = ""


@dataclass
class DemoSummary:
    """What the demo did, for the summary table and for tests."""

    model: str
    evaluation_version: str
    #: The versions that were trained: first, grown and (the whole story) narrow.
    rounds: list[RoundResult]
    rollback: RollbackResult | None
    #: The label-churn finding that refused the flipped version before any training.
    churn_refusal: str
    alias_history: list[registry_pb2.AliasMove]
    production_checkpoint: str
    events: list[SeenEvent]
    wall_seconds: float
    live: LiveTrafficResult | None = None
    #: The flipped version, stopped by its label audit (None in a first-round-only run).
    blocked: BlockedVersion | None = None


def money(amount: common_pb2.Money) -> str:
    value = amount.units + amount.nanos / 1e9
    return f"{value:.4f} {amount.currency_code}".strip()


def overall_metric(metrics: Any, metric: str) -> float | None:
    for value in metrics:
        if value.metric == metric and not value.slice and not value.evaluation_set:
            return float(value.value)
    for value in metrics:
        if value.metric == metric and not value.slice:
            return float(value.value)
    return None


def score_text(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def data_checks_line(checks: Any) -> str:
    """The evaluator's data checks of one evaluation in one line."""
    status = evaluator_pb2.DataCheckStatus.Name
    return ", ".join(
        f"{what} {status(check.status).removeprefix('DATA_CHECK_STATUS_')}"
        for what, check in (
            ("contamination", checks.contamination),
            ("coverage", checks.coverage),
            ("shift", checks.shift),
        )
    )


def worst_comparison(comparisons: Any) -> str:
    """The comparison that moved furthest the wrong way, for an error message."""
    worst = None
    for comparison in comparisons:
        harm = -comparison.delta if comparison.higher_is_better else comparison.delta
        if worst is None or harm > worst[0]:
            worst = (harm, comparison)
    if worst is None:
        return ""
    c = worst[1]
    return f"{c.metric} {c.baseline:.3f} → {c.candidate:.3f} (p = {c.p_value:.2g})"
