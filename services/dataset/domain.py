"""The dataset service's domain: plain dataclasses and rules, no grpc, kafka, torch or SQL.

A *dataset* is a named, typed series of immutable *versions*. A version is content-addressed:
its id derives from the sha256 of the canonical content (see ``services.dataset.validation``),
so the same rows always give the same version. Every upload or import produces a validation
*report*, stored whether the content was accepted or rejected.

Validation rules have stable ids (:class:`Rule`). Each has a default severity; a dataset's
:class:`SchemaPolicy` may override it, except for the rules in :data:`ALWAYS_ERRORS`, which
describe content that cannot become rows at all.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from services.dataset.label_audit import (
    DEFAULT_ACTION as DEFAULT_LABEL_AUDIT_ACTION,
)
from services.dataset.label_audit import (
    DEFAULT_MAX_NOISE_RATE as DEFAULT_MAX_LABEL_NOISE_RATE,
)
from services.dataset.label_audit import (
    LabelAuditAction,
    LabelAuditPolicy,
)
from shared import names
from shared.errors import FieldViolation, InvalidArgument
from shared.ownership import Owner

# -- names ---------------------------------------------------------------------------------------
# Names and ids follow shared.names (DATASET, DATASET_VERSION, VALIDATION_REPORT).

#: Hex digits of the content sha256 in a version id (80 bits: collisions are not a concern).
VERSION_ID_HEX_DIGITS = 20


_HEX_DIGITS = frozenset("0123456789abcdef")


def version_id_for(content_sha256: str) -> str:
    """The id of the version whose canonical content has this sha256."""
    return "v-" + content_sha256[:VERSION_ID_HEX_DIGITS]


def is_sha256_hex(value: str) -> bool:
    """Whether ``value`` is a SHA-256 as the API writes it: 64 lowercase hexadecimal digits."""
    return len(value) == 64 and set(value) <= _HEX_DIGITS


class UploadInterrupted(Exception):
    """The client went away before the upload ended; nothing of it is stored."""


class UploadCutShort(UploadInterrupted):
    """The stream stopped before the end message its header announced: a cancel that reached
    the server as a clean end of stream (or a client that forgot it). Nothing is stored; a
    client still listening is told ``INVALID_ARGUMENT``."""


# -- vocabulary --------------------------------------------------------------------------------


class TaskType(enum.Enum):
    CLASSIFICATION = "classification"
    CAUSAL_LM = "causal_lm"


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class SourceKind(enum.Enum):
    UPLOAD = "upload"
    IMPORT = "import"


class Rule(enum.StrEnum):
    """Stable validation rule ids (``SchemaPolicy.rule_severities`` keys, report rule ids)."""

    #: A line that is not valid UTF-8. The line is skipped.
    NOT_UTF8 = "not_utf8"
    #: A byte-order mark at the start: accepted, stripped, reported.
    BOM = "bom"
    #: An empty or whitespace-only line: skipped, reported.
    BLANK_LINE = "blank_line"
    #: A line that is not exactly one JSON object.
    NOT_JSON_OBJECT = "not_json_object"
    #: The last line has no line end and is not a complete JSON object (the upload was cut).
    TRUNCATED_LAST_LINE = "truncated_last_line"
    #: A line longer than the service's line limit; skipped without being buffered.
    LINE_TOO_LONG = "line_too_long"
    #: A required field is absent.
    MISSING_FIELD = "missing_field"
    #: A field has the wrong JSON type (or a malformed value, e.g. a negative ``weight``).
    WRONG_TYPE = "wrong_type"
    #: A field the task type does not define; dropped from the canonical row.
    UNKNOWN_FIELD = "unknown_field"
    #: Two rows carry the same ``id`` but are not the same row.
    DUPLICATE_ID = "duplicate_id"
    #: An input text (or a label, or a chat message) that is empty, or holds nothing but
    #: whitespace and invisible characters (format characters such as U+200B ZERO WIDTH SPACE
    #: or U+FEFF, controls, fillers such as U+3164): nothing a reader could see.
    EMPTY_TEXT = "empty_text"
    #: Input text longer than the policy's ``max_text_length`` (code points).
    TEXT_TOO_LONG = "text_too_long"
    #: A row identical to an earlier one (same fields, same ``id`` if it has one).
    DUPLICATE_ROW = "duplicate_row"
    #: The same normalized input with a different label than its first occurrence.
    CONFLICTING_LABELS = "conflicting_labels"
    #: A label outside the dataset's label set.
    LABEL_NOT_IN_SET = "label_not_in_set"
    #: A class of the label set with fewer rows than ``min_rows_per_class``.
    CLASS_TOO_SMALL = "class_too_small"
    #: Largest class / smallest class above ``max_imbalance_ratio``.
    CLASS_IMBALANCE = "class_imbalance"
    #: No rows at all.
    EMPTY_DATASET = "empty_dataset"
    #: More bytes than the service accepts in one upload; reading stops there.
    UPLOAD_TOO_LARGE = "upload_too_large"
    #: The bytes received differ from the header's ``content_length``.
    CONTENT_LENGTH_MISMATCH = "content_length_mismatch"
    #: The bytes received differ from the header's ``content_sha256``.
    CONTENT_SHA256_MISMATCH = "content_sha256_mismatch"
    #: A string (a value or a key, at any depth) holds a lone surrogate escape such as
    #: ``"\ud800"``: valid JSON, but not Unicode text, so it cannot be stored as UTF-8.
    INVALID_UNICODE = "invalid_unicode"
    #: An object names the same key twice: which value was meant is ambiguous.
    DUPLICATE_KEY = "duplicate_key"
    #: A string field holds a control character. The policy: C0 controls (U+0000-U+001F) other
    #: than tab, line feed and carriage return, DEL (U+007F), and C1 controls (U+0080-U+009F)
    #: other than U+0085 NEXT LINE (a line break found in real text) are not text. An error by
    #: default; as a warning the row is kept, characters included.
    CONTROL_CHARACTER = "control_character"
    #: A label longer than the service's ``max_label_length`` (code points).
    LABEL_TOO_LONG = "label_too_long"
    #: A slice (``slice``, or the first of ``tags``) longer than ``max_slice_length``.
    SLICE_TOO_LONG = "slice_too_long"
    #: More distinct labels than the service's ``max_labels``: the rows of the labels past it.
    TOO_MANY_LABELS = "too_many_labels"
    #: More distinct slices than the service's ``max_slices``: the rows of the slices past it.
    TOO_MANY_SLICES = "too_many_slices"
    #: Lines that ended in CRLF: accepted, their line end written as LF, reported.
    CRLF_LINE_END = "crlf_line_end"
    #: The last line had no line end: accepted, one written, reported.
    MISSING_FINAL_NEWLINE = "missing_final_newline"
    #: Rows whose normalized input is in the parent version with a different label. Its
    #: severity (an error by default) applies when the share of shared rows that changed label
    #: exceeds the policy's ``max_label_churn`` over at least ``min_shared_rows_for_churn``
    #: shared rows, and the request did not allow it; any smaller churn is a warning.
    LABEL_CHURN = "label_churn"
    #: Groups of rows whose normalized inputs are near-duplicates but not equal (MinHash/LSH
    #: over character shingles, :mod:`shared.near_duplicates`): paraphrase-like repeats that
    #: would leak across parts if the splitter did not keep them together (it does).
    NEAR_DUPLICATES = "near_duplicates"
    #: The near-duplicate check did not run: the version has more rows than the service's
    #: ``near_duplicate_max_rows``.
    NEAR_DUPLICATE_CHECK_SKIPPED = "near_duplicate_check_skipped"


#: Rules whose findings always reject: the content cannot be represented as rows (or as the
#: rows the client meant to send), so no policy may accept it.
ALWAYS_ERRORS: frozenset[Rule] = frozenset(
    {
        Rule.NOT_UTF8,
        Rule.NOT_JSON_OBJECT,
        Rule.TRUNCATED_LAST_LINE,
        Rule.LINE_TOO_LONG,
        Rule.MISSING_FIELD,
        Rule.WRONG_TYPE,
        Rule.DUPLICATE_ID,
        Rule.EMPTY_DATASET,
        Rule.UPLOAD_TOO_LARGE,
        Rule.CONTENT_LENGTH_MISMATCH,
        Rule.CONTENT_SHA256_MISMATCH,
        Rule.INVALID_UNICODE,
        Rule.DUPLICATE_KEY,
        Rule.LABEL_TOO_LONG,
        Rule.SLICE_TOO_LONG,
        Rule.TOO_MANY_LABELS,
        Rule.TOO_MANY_SLICES,
    }
)

#: Severity of each rule when the policy does not override it.
DEFAULT_SEVERITIES: Mapping[Rule, Severity] = {
    **{rule: Severity.ERROR for rule in ALWAYS_ERRORS},
    Rule.BOM: Severity.INFO,
    Rule.BLANK_LINE: Severity.WARNING,
    Rule.UNKNOWN_FIELD: Severity.WARNING,
    Rule.EMPTY_TEXT: Severity.ERROR,
    Rule.TEXT_TOO_LONG: Severity.ERROR,
    Rule.DUPLICATE_ROW: Severity.WARNING,
    Rule.CONFLICTING_LABELS: Severity.ERROR,
    Rule.LABEL_NOT_IN_SET: Severity.ERROR,
    Rule.CLASS_TOO_SMALL: Severity.ERROR,
    Rule.CLASS_IMBALANCE: Severity.WARNING,
    Rule.CONTROL_CHARACTER: Severity.ERROR,
    Rule.CRLF_LINE_END: Severity.INFO,
    Rule.MISSING_FINAL_NEWLINE: Severity.INFO,
    Rule.LABEL_CHURN: Severity.ERROR,
    Rule.NEAR_DUPLICATES: Severity.WARNING,
    Rule.NEAR_DUPLICATE_CHECK_SKIPPED: Severity.INFO,
}

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


# -- policy and datasets -------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Dataset:
    dataset_id: str
    task_type: TaskType
    policy: SchemaPolicy
    display_name: str = ""
    description: str = ""
    latest_version: str = ""
    version_count: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    owner: Owner = field(default_factory=Owner)

    @property
    def name(self) -> str:
        return names.DATASET.format(dataset=self.dataset_id)


# -- reports and versions ------------------------------------------------------------------------


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


@dataclass(frozen=True)
class DatasetVersion:
    dataset_id: str
    version_id: str
    content_sha256: str
    row_count: int
    byte_count: int
    task_type: TaskType
    label_distribution: tuple[tuple[str, int], ...]
    slice_distribution: tuple[tuple[str, int], ...]
    artifact_uri: str
    report: str
    summary: Summary
    lineage: Lineage
    create_time: datetime

    @property
    def name(self) -> str:
        return names.DATASET_VERSION.format(dataset=self.dataset_id, version=self.version_id)

    @property
    def dataset(self) -> str:
        return names.DATASET.format(dataset=self.dataset_id)


def artifact_key(dataset_id: str, version_id: str) -> str:
    """Where a version's canonical JSONL lives in the dataset service's artifact store."""
    return f"datasets/{dataset_id}/versions/{version_id}/content.jsonl"


# -- label churn against the parent version ------------------------------------------------------

#: Changed rows quoted (line, old label, new label) in a ``label_churn`` message.
CHURN_ROWS_QUOTED = 10


@dataclass(frozen=True)
class LabelChange:
    """One row of the new version whose input is in the parent with another label."""

    line: int
    old_label: str
    new_label: str


@dataclass(frozen=True)
class LabelChurn:
    """How the labels of the rows a version shares with its parent changed.

    ``shared_rows`` counts the new version's rows whose normalized input is in the parent,
    ``changed_rows`` those of them with another label than the parent's (its first row with
    that input); ``transitions`` counts them per ``(old, new)`` label pair, and ``changes``
    lists the first few, in line order.
    """

    parent_version: str
    shared_rows: int
    changed_rows: int
    transitions: tuple[tuple[str, str, int], ...]
    changes: tuple[LabelChange, ...]

    @property
    def share(self) -> float:
        return self.changed_rows / self.shared_rows if self.shared_rows else 0.0


def label_churn_finding(
    churn: LabelChurn, policy: SchemaPolicy, *, override_reason: str = ""
) -> Finding | None:
    """The ``label_churn`` finding: the policy's severity when the share of changed rows is over
    ``max_label_churn`` on at least ``min_shared_rows_for_churn`` shared rows and no override
    was given, else a warning; None when no shared row changed label."""
    if not churn.changed_rows:
        return None
    over = (
        churn.shared_rows >= policy.min_shared_rows_for_churn
        and churn.share > policy.max_label_churn
    )
    severity = policy.severity(Rule.LABEL_CHURN) if over else Severity.WARNING
    verdict = (
        f"more than the {policy.max_label_churn:.0%} allowed"
        if over
        else f"within the {policy.max_label_churn:.0%} allowed"
        if churn.shared_rows >= policy.min_shared_rows_for_churn
        else f"fewer than {policy.min_shared_rows_for_churn} shared rows: not blocking"
    )
    if over and override_reason:
        severity = Severity.WARNING
        verdict += f", allowed by the request: {override_reason}"
    transitions = ", ".join(f"{old!r}→{new!r} {n}" for old, new, n in churn.transitions)
    quoted = "; ".join(
        f"line {c.line}: {c.old_label!r}→{c.new_label!r}" for c in churn.changes[:CHURN_ROWS_QUOTED]
    )
    return Finding(
        rule=Rule.LABEL_CHURN,
        severity=severity,
        message=f"{churn.changed_rows} of the {churn.shared_rows} rows whose input is in the "
        f"parent {churn.parent_version} changed label ({churn.share:.1%}, {verdict}); "
        f"{transitions}; {quoted}",
        count=churn.changed_rows,
        line_numbers=tuple(c.line for c in churn.changes),
        field="label",
    )
