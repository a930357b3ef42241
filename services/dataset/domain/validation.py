"""Streaming validation of an upload into canonical JSONL, with bounded memory.

:class:`StreamingValidator` takes the upload as byte chunks of any size and boundaries and
writes the canonical JSONL (``DATA.md``: one compact, key-sorted JSON object per line, every
row with an ``id``) to a sink as it goes. Nothing holds the whole upload:

* **Line splitting is incremental**: bytes are gathered into blocks of complete lines (about
  ``block_bytes``); only the bytes after the last line end wait for the next chunk, and a line
  longer than ``max_line_bytes`` is reported and skipped without being buffered.
* **UTF-8 decoding is incremental**: only complete lines are decoded, and since the byte
  ``0x0A`` never occurs inside a multi-byte UTF-8 sequence, a line end never splits a
  character (``services.dataset.domain.rows``).
* **Hashing streams**: the sha256 of the bytes as received is updated per chunk; the sink (an
  artifact spool) hashes the canonical content as it is written.
* **Per-row rules run block by block**, in this thread or in worker processes
  (``executor``): at most ``max_in_flight`` blocks are out at once, and results are merged in
  upload order, so the outcome is the same either way.
* **Cross-row rules keep fingerprints, not rows** (:mod:`services.dataset.domain.fingerprints`):
  exact duplicates and id uniqueness share one index (12 bytes per row), conflicting labels use
  another (12 bytes per row, CLASSIFICATION only), each with a merge buffer of at most 24 MiB.
  Memory therefore grows by **about 24 bytes per row** (12 for CAUSAL_LM) whatever the rows'
  size, on top of a constant: the blocks in flight, and label and slice counts per distinct
  value. Findings keep counts and the first ``max_line_numbers`` line numbers per rule and
  field.
* **Label churn** (:mod:`services.dataset.domain.churn`) looks each block's kept rows up in the
  parent's input fingerprints (12 bytes per parent row, read before the upload starts).
* **Near-duplicates** (:mod:`services.dataset.domain.near_duplicate_rows`) are the exception: that
  check keeps the kept rows' normalized texts, so it runs only up to a row limit.

Fingerprints are 64 bits (ids, inputs) and 32 more bits for a row's content under an id: two
different rows or inputs share one with probability about ``n² / 2⁶⁵`` (below one in a million
for five million rows), and the consequence would be a spurious finding, never a wrong content
hash.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from services.dataset.domain.churn import ChurnCounter, LabelChurn, ParentLabels
from services.dataset.domain.fingerprints import FingerprintIndex
from services.dataset.domain.near_duplicate_rows import NearDuplicateRows
from services.dataset.domain.policy import DEFAULT_VALUE_BOUNDS, SchemaPolicy, ValueBounds
from services.dataset.domain.reports import Finding, ordered_findings
from services.dataset.domain.rows import (
    BlockResult,
    RowFinding,
    RowRules,
    check_block,
    id_fingerprint,
    shown_name,
    too_long_message,
)
from services.dataset.domain.rules import Rule, Severity
from shared.canonical_jsonl import canonical_json, parse_line
from shared.task_types import TaskType

BOM = b"\xef\xbb\xbf"
#: Bytes of complete lines checked together (amortises per-block costs; bounds memory).
DEFAULT_BLOCK_BYTES = 1 << 20
#: The layout of ``BlockResult.keys``.
_KEYS = np.dtype([("id", ">u8"), ("row", ">u4")])
#: Distinct unknown field names named in the ``unknown_field`` message.
_UNKNOWN_FIELDS_NAMED = 10


@dataclass(frozen=True)
class ValidationResult:
    """What validation found and counted; the canonical content went to the sink."""

    findings: tuple[Finding, ...]
    lines_read: int
    bytes_read: int
    source_sha256: str
    row_count: int
    label_distribution: tuple[tuple[str, int], ...]
    slice_distribution: tuple[tuple[str, int], ...]
    #: How the labels of rows shared with the parent changed; None without a parent to
    #: compare with (or when reading stopped early).
    label_churn: LabelChurn | None = None

    @property
    def has_errors(self) -> bool:
        return any(f.severity is Severity.ERROR for f in self.findings)


class FindingRecorder:
    """Counts findings per (rule, field) and keeps the first line numbers of each."""

    def __init__(self, policy: SchemaPolicy, max_line_numbers: int) -> None:
        self._policy = policy
        self._max_lines = max_line_numbers
        # (rule, field) -> [count, first line numbers, message of the first occurrence]
        self._entries: dict[tuple[Rule, str], list[Any]] = {}
        self._unknown_names: list[str] = []
        self.error_seen = False

    def is_error(self, rule: Rule) -> bool:
        return self._policy.severity(rule) is Severity.ERROR

    def add(self, rule: Rule, line: int, message: str, field: str = "", count: int = 1) -> None:
        """``count`` occurrences at ``line`` (0 for a dataset-wide finding)."""
        entry = self._entries.get((rule, field))
        if entry is None:
            entry = self._entries[(rule, field)] = [0, [], message]
            self.error_seen = self.error_seen or self.is_error(rule)
        entry[0] += count
        if line and len(entry[1]) < self._max_lines:
            entry[1].append(line)

    def add_lines(self, rule: Rule, lines: list[int], count: int, message: str) -> None:
        """``count`` occurrences, the first of them at ``lines``."""
        self.add(rule, 0, message, count=count)
        entry = self._entries[(rule, "")]
        entry[1].extend(lines[: self._max_lines - len(entry[1])])

    def add_row_finding(self, finding: RowFinding) -> None:
        rule = Rule(finding.rule)
        if rule is not Rule.UNKNOWN_FIELD:
            self.add(rule, finding.line, finding.message, finding.field)
            return
        for name in finding.names:
            shown, names = shown_name(name), self._unknown_names
            if shown not in names and len(names) < _UNKNOWN_FIELDS_NAMED:
                names.append(shown)
        self.add(rule, finding.line, "")
        shown = ", ".join(self._unknown_names)
        self._entries[(rule, "")][2] = (
            f"fields this task type does not define were dropped: {shown}"
        )

    def findings(self) -> tuple[Finding, ...]:
        return ordered_findings(
            [
                Finding(
                    rule=rule,
                    severity=self._policy.severity(rule),
                    message=message,
                    count=count,
                    line_numbers=tuple(sorted(lines)),
                    field=field,
                )
                for (rule, field), (count, lines, message) in self._entries.items()
            ]
        )


class StreamingValidator:
    """Validate and canonicalise one upload, chunk by chunk; see the module docstring.

    ``sink`` receives the canonical content in order, in blocks. Once any error has been found
    nothing more is written to it (the content will be rejected), but validation goes on so
    that the report names every problem. Call :meth:`close` when abandoning an upload midway.
    """

    def __init__(
        self,
        task_type: TaskType,
        policy: SchemaPolicy,
        sink: Callable[[bytes], None],
        *,
        max_line_bytes: int,
        max_line_numbers: int = 20,
        executor: Executor | None = None,
        max_in_flight: int = 4,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        bounds: ValueBounds = DEFAULT_VALUE_BOUNDS,
        parent_labels: ParentLabels | None = None,
        near_duplicate_threshold: float = 0.0,
        near_duplicate_max_rows: int = 0,
    ) -> None:
        self._task = task_type
        self._policy = policy
        self._bounds = bounds
        self._rules = RowRules.of(task_type, policy, max_line_bytes=max_line_bytes, bounds=bounds)
        self._sink = sink
        self._executor = executor
        self._max_in_flight = max(1, max_in_flight)
        self._block_bytes = block_bytes
        self.findings = FindingRecorder(policy, max_line_numbers)
        self._source_digest = hashlib.sha256()
        self._buffer = bytearray()
        self._started = False
        self._skipping_long_line = False
        self._next_line = 1
        self._in_flight: deque[Future[BlockResult]] = deque()
        self.bytes_read = 0
        self.row_count = 0
        self._ids = FingerprintIndex()
        self._inputs = FingerprintIndex()
        self._repeats: dict[int, int] = {}
        self._labels: dict[str, int] = {}
        self._label_names: list[str] = []
        self._label_counts = np.zeros(0, dtype=np.int64)
        self._slice_counts: dict[str, int] = {}
        self._churn = (
            ChurnCounter(parent_labels, max_line_numbers)
            if parent_labels is not None and task_type is TaskType.CLASSIFICATION
            else None
        )
        self._near_duplicates = (
            NearDuplicateRows(near_duplicate_threshold, near_duplicate_max_rows)
            if near_duplicate_threshold > 0
            else None
        )
        #: The kept rows' near-duplicate texts, as the blocks sent them (line numbers, UTF-8
        #: texts each ending in a line end), until the end: only an upload within the check's
        #: row limit pays for indexing them. None once past the limit (the check is skipped).
        self._near_duplicate_texts: list[tuple[list[int], bytes]] | None = []
        self._near_duplicate_rows = 0
        if self._near_duplicates is not None:
            self._rules = replace(self._rules, near_duplicate_texts=True)

    @property
    def lines_read(self) -> int:
        """Lines handed to the row rules so far (all of them, once finished)."""
        return self._next_line - 1

    # -- input ------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the upload."""
        if not chunk:
            return
        self.bytes_read += len(chunk)
        self._source_digest.update(chunk)
        if self._skipping_long_line:
            end = chunk.find(b"\n")
            if end < 0:
                return
            self._skipping_long_line = False
            chunk = chunk[end + 1 :]
        buffer = self._buffer
        buffer += chunk
        if not self._started:
            if len(buffer) < len(BOM) and BOM.startswith(buffer):
                return  # could still become a byte-order mark
            self._started = True
            if buffer.startswith(BOM):
                self.findings.add(Rule.BOM, 1, "a UTF-8 byte-order mark was stripped")
                del buffer[: len(BOM)]
        max_line = self._rules.max_line_bytes
        if len(buffer) >= self._block_bytes or len(buffer) > max_line:
            last_end = buffer.rfind(b"\n")
            if last_end >= 0:
                with memoryview(buffer) as view:  # one copy, not two
                    block = bytes(view[: last_end + 1])
                del buffer[: last_end + 1]
                self._submit(block, unterminated=False)
        if len(buffer) > max_line:
            self.findings.add(Rule.LINE_TOO_LONG, self._next_line, too_long_message(self._rules))
            self._next_line += 1
            buffer.clear()
            self._skipping_long_line = True

    def finish(self, *, complete: bool = True) -> ValidationResult:
        """End of the upload: the last lines, every block's results, the dataset-wide rules.

        ``complete=False`` when reading stopped early (the upload was too large): the lines
        checked so far count, the unfinished last line and the dataset-wide rules do not.
        """
        if self._buffer and complete:
            block = bytes(self._buffer)
            self._buffer.clear()
            self._submit(block, unterminated=not block.endswith(b"\n"))
        while self._in_flight:
            self._merge(self._in_flight.popleft().result())
        if complete:
            self._dataset_rules()
        labels = sorted(
            (name, int(self._label_counts[i]))
            for i, name in enumerate(self._label_names)
            if self._label_counts[i]
        )
        return ValidationResult(
            findings=self.findings.findings(),
            lines_read=self.lines_read,
            bytes_read=self.bytes_read,
            source_sha256=self._source_digest.hexdigest(),
            row_count=self.row_count,
            label_distribution=tuple(labels),
            slice_distribution=tuple(sorted(self._slice_counts.items())),
            label_churn=self._churn.result() if self._churn is not None and complete else None,
        )

    def close(self) -> None:
        """Abandon the upload: blocks not yet started are cancelled, results dropped."""
        for future in self._in_flight:
            future.cancel()
        self._in_flight.clear()
        self._buffer.clear()

    def _submit(self, block: bytes, *, unterminated: bool) -> None:
        first_line = self._next_line
        self._next_line += block.count(b"\n") + (1 if unterminated else 0)
        if self._executor is None:
            self._merge(check_block(block, first_line, self._rules, unterminated=unterminated))
            return
        self._in_flight.append(
            self._executor.submit(
                check_block, block, first_line, self._rules, unterminated=unterminated
            )
        )
        while self._in_flight and (
            len(self._in_flight) > self._max_in_flight or self._in_flight[0].done()
        ):
            self._merge(self._in_flight.popleft().result())

    # -- cross-row rules --------------------------------------------------------------------

    def _merge(self, result: BlockResult) -> None:  # noqa: PLR0912 - one pass over the verdicts
        """The next block's results, in upload order: cross-row rules, then its content."""
        findings = self.findings
        for finding in result.findings:
            findings.add_row_finding(finding)
        if result.crlf_count:
            findings.add_lines(
                Rule.CRLF_LINE_END,
                result.crlf_lines,
                result.crlf_count,
                "lines ended in CRLF; the canonical content ends them in LF",
            )
        count = result.row_count
        if count == 0:
            return
        line_numbers = np.frombuffer(result.line_numbers, dtype=np.uint64)
        keys = np.frombuffer(result.keys, dtype=_KEYS)
        id_keys = keys["id"].astype(np.uint64)
        row_keys = keys["row"].astype(np.uint32)
        keep = np.ones(count, dtype=np.bool_)
        repeats: list[int] = []
        id_seen, first_row_keys = self._ids.observe(id_keys, row_keys)
        for i in np.flatnonzero(id_seen).tolist():
            line = int(line_numbers[i])
            if first_row_keys[i] != row_keys[i]:
                findings.add(
                    Rule.DUPLICATE_ID, line, "the id was already used by a different row", "id"
                )
                keep[i] = False
            else:
                findings.add(Rule.DUPLICATE_ROW, line, "the row repeats an earlier row exactly")
                if findings.is_error(Rule.DUPLICATE_ROW):
                    keep[i] = False
                else:
                    repeats.append(i)
        if self._task is TaskType.CLASSIFICATION:
            self._label_rules(result, line_numbers, keep)
        self._slice_rules(result, line_numbers, keep)
        self._collect_texts(result, line_numbers, keep)
        if findings.error_seen:
            self.row_count += int(keep.sum())
            return  # the content will be rejected: no point writing it
        lines = result.content.split(b"\n") if repeats or not keep.all() else None
        if lines is None:
            self.row_count += count
            self._sink(result.content)
            return
        for i in repeats:
            repeated = self._repeat(
                lines[i], int(id_keys[i]), int(row_keys[i]), int(line_numbers[i])
            )
            if repeated is None:
                keep[i] = False
            else:
                lines[i] = repeated
        kept = [line for line, keep_row in zip(lines, keep.tolist(), strict=False) if keep_row]
        self.row_count += len(kept)
        if kept:
            kept.append(b"")
            self._sink(b"\n".join(kept))

    def _label_rules(self, result: BlockResult, line_numbers: np.ndarray, keep: np.ndarray) -> None:
        """``too_many_labels``, ``conflicting_labels`` and the label counts of the kept rows."""
        to_global = np.array([self._label_index(name) for name in result.labels], dtype=np.int64)
        labels = to_global[np.frombuffer(result.label_indexes, dtype=np.uint32)]
        input_keys = np.frombuffer(result.input_keys, dtype=">u8").astype(np.uint64)
        known = labels >= 0  # the rows whose label is within the limit on distinct labels
        first_labels = labels.copy()
        if known.all():
            first_labels[:] = self._inputs.observe(input_keys, labels.astype(np.uint32))[1]
        else:
            limit = self._bounds.max_labels
            for i in np.flatnonzero(~known).tolist():
                self.findings.add(
                    Rule.TOO_MANY_LABELS,
                    int(line_numbers[i]),
                    f"more than {limit} distinct labels, this service's limit",
                    "label",
                )
            keep &= known
            first_labels[known] = self._inputs.observe(
                input_keys[known], labels[known].astype(np.uint32)
            )[1]
        for i in np.flatnonzero(first_labels != labels).tolist():
            self.findings.add(
                Rule.CONFLICTING_LABELS,
                int(line_numbers[i]),
                f"label {self._label_names[labels[i]]!r} contradicts label "
                f"{self._label_names[first_labels[i]]!r} of an earlier row with the same input",
                "label",
            )
            if self.findings.is_error(Rule.CONFLICTING_LABELS):
                keep[i] = False
        if self._churn is not None:
            names = self._label_names
            self._churn.observe(
                input_keys[keep], [names[i] for i in labels[keep].tolist()], line_numbers[keep]
            )
        counts = np.bincount(labels[keep], minlength=len(self._label_names))
        if len(self._label_counts) < len(counts):
            grown = np.zeros(len(counts), dtype=np.int64)
            grown[: len(self._label_counts)] = self._label_counts
            self._label_counts = grown
        self._label_counts[: len(counts)] += counts

    def _slice_rules(self, result: BlockResult, line_numbers: np.ndarray, keep: np.ndarray) -> None:
        """``too_many_slices`` and the slice counts of the kept rows."""
        slice_counts, max_slices = self._slice_counts, self._bounds.max_slices
        for i, value in result.slices:
            if keep[i]:
                seen = slice_counts.get(value)
                if seen is None and len(slice_counts) >= max_slices:
                    self.findings.add(
                        Rule.TOO_MANY_SLICES,
                        int(line_numbers[i]),
                        f"more than {max_slices} distinct slices, this service's limit",
                        "slice",
                    )
                    keep[i] = False
                else:
                    slice_counts[value] = (seen or 0) + 1

    def _collect_texts(
        self, result: BlockResult, line_numbers: np.ndarray, keep: np.ndarray
    ) -> None:
        """The kept rows' near-duplicate texts (:func:`shared.input_text.near_duplicate_text`:
        the input; for CAUSAL_LM prompt and completion), for the near-duplicate check."""
        if self._near_duplicates is None or self._near_duplicate_texts is None:
            return
        kept = np.flatnonzero(keep)
        self._near_duplicate_rows += len(kept)
        if self._near_duplicate_rows > self._near_duplicates.max_rows:
            # over budget: free the texts now, and the next blocks need none
            self._near_duplicate_texts = None
            self._rules = replace(self._rules, near_duplicate_texts=False)
            return
        texts = bytes(result.near_duplicate_texts)
        if len(kept) < len(keep):
            every = texts.split(b"\n")
            texts = b"".join(every[i] + b"\n" for i in kept.tolist())
        self._near_duplicate_texts.append((line_numbers[kept].tolist(), texts))

    def _label_index(self, label: str) -> int:
        """The label's global index; -1 for a new one past the limit on distinct labels."""
        index = self._labels.get(label)
        if index is None:
            if len(self._label_names) >= self._bounds.max_labels:
                return -1
            index = self._labels[label] = len(self._label_names)
            self._label_names.append(label)
        return index

    def _repeat(self, line: bytes, id_key: int, row_key: int, line_number: int) -> bytes | None:
        """An exact repeat's line with the next ``~n`` id; None if that id is taken."""
        row = parse_line(line.decode(), line_number)
        repeat = self._repeats[id_key] = self._repeats.get(id_key, 1) + 1
        row["id"] = f"{row['id']}~{repeat}"
        taken, _ = self._ids.observe(
            np.array([id_fingerprint(row["id"])], dtype=np.uint64),
            np.array([row_key], dtype=np.uint32),
        )
        if taken[0]:
            self.findings.add(
                Rule.DUPLICATE_ID,
                line_number,
                f"id {row['id']!r}, given to a repeated row, was already used",
                "id",
            )
            return None
        return canonical_json(row).encode()

    def _dataset_rules(self) -> None:
        findings = self.findings
        if self.row_count == 0:
            findings.add(Rule.EMPTY_DATASET, 0, "the content has no rows")
            return
        if self._near_duplicates is not None:
            self._near_duplicate_rule(self._near_duplicates)
        if self._task is not TaskType.CLASSIFICATION:
            return
        counts = {name: int(self._label_counts[i]) for i, name in enumerate(self._label_names)}
        classes = self._rules.label_set if self._rules.label_set is not None else set(counts)
        policy = self._policy
        small = sorted(
            (label, counts.get(label, 0))
            for label in classes
            if counts.get(label, 0) < policy.min_rows_per_class
        )
        if small:
            listed = ", ".join(f"{label!r} ({n})" for label, n in small)
            findings.add(
                Rule.CLASS_TOO_SMALL,
                0,
                f"classes with fewer than {policy.min_rows_per_class} rows: {listed}",
                "label",
                count=len(small),
            )
        present = {label: n for label, n in counts.items() if n > 0}
        if len(present) >= 2:
            largest = max(present, key=lambda label: (present[label], label))
            smallest = min(present, key=lambda label: (present[label], label))
            ratio = present[largest] / present[smallest]
            if ratio > policy.max_imbalance_ratio:
                findings.add(
                    Rule.CLASS_IMBALANCE,
                    0,
                    f"largest class {largest!r} has {present[largest]} rows, smallest "
                    f"{smallest!r} {present[smallest]}: ratio {ratio:.2f} > "
                    f"{policy.max_imbalance_ratio:g}",
                    "label",
                )

    def _near_duplicate_rule(self, rows: NearDuplicateRows) -> None:
        if self._near_duplicate_texts is not None:
            add = rows.add
            for lines, texts in self._near_duplicate_texts:
                # one decode a block (a line end never occurs inside a UTF-8 character)
                for line, text in zip(lines, texts.decode().split("\n"), strict=False):
                    add(line, text)
            self._near_duplicate_texts = None
        if self._near_duplicate_rows > rows.max_rows:
            self.findings.add(
                Rule.NEAR_DUPLICATE_CHECK_SKIPPED,
                0,
                f"more than {rows.max_rows} rows, this service's limit for the near-duplicate "
                "check: it did not run",
            )
            return
        found = rows.groups(self._executor)
        if not found.groups:
            return
        compared = "inputs" if self._task is TaskType.CLASSIFICATION else "prompts and completions"
        self.findings.add_lines(
            Rule.NEAR_DUPLICATES,
            found.lines(),
            found.row_count,
            f"{len(found.groups)} group(s) of rows with near-duplicate {compared} "
            f"({found.row_count} "
            f"rows; estimated Jaccard similarity of their 5-byte shingles >= "
            f"{rows.threshold:g}); the splitter keeps each group in one part: "
            f"{found.describe()}",
        )
