"""What a dataset's versions must satisfy: its schema policy, and the service-wide bounds
on label and slice names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from services.dataset.domain.label_audit import DEFAULT_ACTION as DEFAULT_LABEL_AUDIT_ACTION
from services.dataset.domain.label_audit import (
    DEFAULT_MAX_NOISE_RATE as DEFAULT_MAX_LABEL_NOISE_RATE,
)
from services.dataset.domain.label_audit import LabelAuditAction, LabelAuditPolicy
from services.dataset.domain.rules import ALWAYS_ERRORS, DEFAULT_SEVERITIES, Rule, Severity
from shared.errors import FieldViolation, InvalidArgument
from shared.task_types import TaskType

DEFAULT_MAX_TEXT_LENGTH = 32768
DEFAULT_MIN_ROWS_PER_CLASS = 10
DEFAULT_MAX_IMBALANCE_RATIO = 10.0
#: Relabelling a fifth of the rows a version shares with its parent is far beyond routine
#: corrections (a few percent at most) and well below what a swapped or corrupted label column
#: gives (about half of the rows for two classes, more for a systematic flip): it blocks.
DEFAULT_MAX_LABEL_CHURN = 0.2
#: Below this many shared rows a share is too noisy to block on (5 changed rows of 20 would
#: already be 25 %); the changes are still reported, as a warning.
DEFAULT_MIN_SHARED_ROWS_FOR_CHURN = 50


@dataclass(frozen=True)
class ValueBounds:
    """Service-wide bounds on label and slice names (settings, not per-dataset policy).

    Every distinct label and slice travels in ``DatasetVersioned`` and in the split events
    (their distributions), so without bounds one row could make a multi-megabyte event, more
    than Kafka accepts by default (1 MB). With the defaults, ASCII names fill each list with
    at most 200 kB.
    """

    #: Longest label, in code points (``label_too_long``).
    max_label_length: int = 200
    #: Most distinct labels in one version (``too_many_labels``).
    max_labels: int = 1000
    #: Longest slice, in code points (``slice_too_long``).
    max_slice_length: int = 200
    #: Most distinct slices in one version (``too_many_slices``).
    max_slices: int = 1000


DEFAULT_VALUE_BOUNDS = ValueBounds()


@dataclass(frozen=True)
class SchemaPolicy:
    """What a dataset's versions must satisfy, and how strictly. Zero means server default."""

    label_set: tuple[str, ...] = ()
    label_set_derived: bool = False
    max_text_length: int = 0
    min_rows_per_class: int = 0
    max_imbalance_ratio: float = 0.0
    rule_severities: Mapping[str, Severity] = field(default_factory=dict)
    #: Largest share of the rows shared with the parent version that may change label
    #: (``label_churn``), in (0, 1]; 0 means the default.
    max_label_churn: float = 0.0
    #: Fewest shared rows for ``max_label_churn`` to block; 0 means the default.
    min_shared_rows_for_churn: int = 0
    #: The label audit's action above ``max_label_noise_rate``; ``None`` means the default.
    label_audit_action: LabelAuditAction | None = None
    #: Largest estimated label noise rate the label audit accepts, in (0, 1); 0 means the default.
    max_label_noise_rate: float = 0.0

    def resolved(
        self, task_type: TaskType, *, field_prefix: str = "dataset.schema_policy"
    ) -> SchemaPolicy:
        """Defaults filled in; INVALID_ARGUMENT listing every bad setting."""
        violations: list[FieldViolation] = []
        if self.max_text_length < 0:
            violations.append(
                FieldViolation(
                    f"{field_prefix}.max_text_length", "must be >= 1 (0: default)", "OUT_OF_RANGE"
                )
            )
        if self.min_rows_per_class < 0:
            violations.append(
                FieldViolation(
                    f"{field_prefix}.min_rows_per_class",
                    "must be >= 1 (0: default)",
                    "OUT_OF_RANGE",
                )
            )
        if self.max_imbalance_ratio != 0 and not self.max_imbalance_ratio >= 1:
            violations.append(
                FieldViolation(
                    f"{field_prefix}.max_imbalance_ratio",
                    "must be >= 1 (0: default)",
                    "OUT_OF_RANGE",
                )
            )
        if self.max_label_churn != 0 and not 0 < self.max_label_churn <= 1:
            violations.append(
                FieldViolation(
                    f"{field_prefix}.max_label_churn",
                    "must be in (0, 1] (0: default)",
                    "OUT_OF_RANGE",
                )
            )
        if self.min_shared_rows_for_churn < 0:
            violations.append(
                FieldViolation(
                    f"{field_prefix}.min_shared_rows_for_churn",
                    "must be >= 1 (0: default)",
                    "OUT_OF_RANGE",
                )
            )
        violations += self._label_audit_violations(field_prefix)
        labels = self.label_set
        if labels and task_type is not TaskType.CLASSIFICATION:
            violations.append(
                FieldViolation(
                    f"{field_prefix}.label_set",
                    "only CLASSIFICATION datasets have labels",
                    "NOT_APPLICABLE",
                )
            )
        if len(set(labels)) != len(labels):
            violations.append(
                FieldViolation(f"{field_prefix}.label_set", "labels must be distinct", "DUPLICATE")
            )
        if any(not label.strip() for label in labels):
            violations.append(
                FieldViolation(f"{field_prefix}.label_set", "labels must not be empty", "EMPTY")
            )
        known = {rule.value for rule in Rule}
        for rule_id, severity in self.rule_severities.items():
            path = f"{field_prefix}.rule_severities[{rule_id}]"
            if rule_id not in known:
                violations.append(
                    FieldViolation(
                        path, f"unknown rule id; known: {', '.join(sorted(known))}", "UNKNOWN_RULE"
                    )
                )
            elif Rule(rule_id) in ALWAYS_ERRORS and severity is not Severity.ERROR:
                violations.append(
                    FieldViolation(path, "this rule is always an error", "NOT_OVERRIDABLE")
                )
        if violations:
            raise InvalidArgument("invalid schema policy", violations)
        return replace(
            self,
            label_set=tuple(sorted(labels)),
            max_text_length=self.max_text_length or DEFAULT_MAX_TEXT_LENGTH,
            min_rows_per_class=self.min_rows_per_class or DEFAULT_MIN_ROWS_PER_CLASS,
            max_imbalance_ratio=self.max_imbalance_ratio or DEFAULT_MAX_IMBALANCE_RATIO,
            max_label_churn=self.max_label_churn or DEFAULT_MAX_LABEL_CHURN,
            min_shared_rows_for_churn=self.min_shared_rows_for_churn
            or DEFAULT_MIN_SHARED_ROWS_FOR_CHURN,
            label_audit_action=self.label_audit_action or DEFAULT_LABEL_AUDIT_ACTION,
            max_label_noise_rate=self.max_label_noise_rate or DEFAULT_MAX_LABEL_NOISE_RATE,
            rule_severities=dict(sorted(self.rule_severities.items())),
        )

    def _label_audit_violations(self, field_prefix: str) -> list[FieldViolation]:
        if self.max_label_noise_rate == 0 or 0 < self.max_label_noise_rate < 1:
            return []
        return [
            FieldViolation(
                f"{field_prefix}.max_label_noise_rate",
                "must be in (0, 1) (0: default)",
                "OUT_OF_RANGE",
            )
        ]

    def label_audit_policy(self) -> LabelAuditPolicy:
        """The label audit's policy (defaults filled in)."""
        return LabelAuditPolicy(
            self.label_audit_action or DEFAULT_LABEL_AUDIT_ACTION,
            self.max_label_noise_rate or DEFAULT_MAX_LABEL_NOISE_RATE,
        )

    def severity(self, rule: Rule) -> Severity:
        return self.rule_severities.get(rule.value, DEFAULT_SEVERITIES[rule])

    def with_derived_labels(self, labels: tuple[str, ...]) -> SchemaPolicy:
        return replace(self, label_set=tuple(sorted(labels)), label_set_derived=True)
