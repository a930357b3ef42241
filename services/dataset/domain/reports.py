"""Validation reports: the findings of one upload or import, their summary, and the lineage
they record."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from services.dataset.domain.rules import Rule, Severity
from shared import names


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class SourceKind(enum.Enum):
    UPLOAD = "upload"
    IMPORT = "import"


@dataclass(frozen=True)
class Finding:
    """One rule's findings about one field: how many, and the first few line numbers."""

    rule: Rule
    severity: Severity
    message: str
    count: int
    line_numbers: tuple[int, ...] = ()
    field: str = ""


@dataclass(frozen=True)
class Summary:
    outcome: Outcome
    error_count: int
    warning_count: int
    info_count: int
    error_rules: tuple[str, ...]
    warning_rules: tuple[str, ...]

    @classmethod
    def of(cls, findings: tuple[Finding, ...]) -> Summary:
        def total(severity: Severity) -> int:
            return sum(f.count for f in findings if f.severity is severity)

        def rules(severity: Severity) -> tuple[str, ...]:
            return tuple(sorted({f.rule.value for f in findings if f.severity is severity}))

        errors = total(Severity.ERROR)
        return cls(
            outcome=Outcome.REJECTED if errors else Outcome.ACCEPTED,
            error_count=errors,
            warning_count=total(Severity.WARNING),
            info_count=total(Severity.INFO),
            error_rules=rules(Severity.ERROR),
            warning_rules=rules(Severity.WARNING),
        )


def ordered_findings(findings: list[Finding]) -> tuple[Finding, ...]:
    """Errors first, then warnings, then infos; by rule id, then field within each."""
    rank = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    return tuple(sorted(findings, key=lambda f: (rank[f.severity], f.rule.value, f.field)))


@dataclass(frozen=True)
class Lineage:
    parent_version: str
    uploader: str
    source_kind: SourceKind
    source: str
    source_sha256: str
    #: Why label churn beyond the policy was allowed (the request's ``label_churn_reason``);
    #: empty when the request did not allow it.
    label_churn_override: str = ""


@dataclass(frozen=True)
class ValidationReport:
    dataset_id: str
    report_id: str
    findings: tuple[Finding, ...]
    lines_read: int
    bytes_read: int
    lineage: Lineage
    validate_only: bool
    create_time: datetime
    dataset_version: str = ""

    @property
    def name(self) -> str:
        return names.VALIDATION_REPORT.format(dataset=self.dataset_id, report=self.report_id)

    @property
    def summary(self) -> Summary:
        return Summary.of(self.findings)
