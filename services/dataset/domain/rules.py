"""The validation rules: stable ids, which always reject, and their default severities."""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


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
