"""Label churn against the parent version: which rows of an upload relabel their parent's rows.

The parent's labels are read once from its canonical content into :class:`ParentLabels` — the
rows' input fingerprints (the same 64-bit keys the ``conflicting_labels`` rule uses), sorted,
with a label code each: 12 bytes per parent row, whatever the rows' size. The validator then
looks each block's input keys up with one ``searchsorted`` (:class:`ChurnCounter`), so the check
adds no pass over the upload and needs no model: it runs in the gRPC process, before the version
exists. When the parent has one input under several labels (``conflicting_labels`` as a
warning), its first row's label is the parent's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.reports import Finding
from services.dataset.domain.rows import input_fingerprint
from services.dataset.domain.rules import Rule, Severity
from shared.canonical_jsonl import Row

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


class ParentLabels:
    """The label of each normalized input of a parent version (CLASSIFICATION)."""

    def __init__(self, parent_version: str, keys: np.ndarray, codes: np.ndarray, names: list[str]):
        self.parent_version = parent_version
        self._keys = keys
        self._codes = codes
        self._names = names
        self._index = {name: i for i, name in enumerate(names)}

    @classmethod
    def of_rows(cls, parent_version: str, rows: Iterable[Row]) -> ParentLabels:
        names: dict[str, int] = {}
        keys: list[int] = []
        codes: list[int] = []
        for row in rows:
            keys.append(input_fingerprint(row["text"]))
            codes.append(names.setdefault(row["label"], len(names)))
        key_array = np.array(keys, dtype=np.uint64)
        code_array = np.array(codes, dtype=np.int32)
        # a stable sort keeps the first row first among equal keys, and np.unique's first
        # index then picks it: the parent's label for an input is its first row's
        order = np.argsort(key_array, kind="stable")
        key_array, code_array = key_array[order], code_array[order]
        _, first = np.unique(key_array, return_index=True)
        return cls(parent_version, key_array[first], code_array[first], list(names))

    def __len__(self) -> int:
        return len(self._keys)

    def code(self, label: str) -> int:
        """The parent's code of ``label``; -1 for a label the parent never used."""
        return self._index.get(label, -1)

    def name(self, code: int) -> str:
        return self._names[code]

    def lookup(self, input_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per key: whether the parent has that input, and its label code there (else 0)."""
        if not len(self._keys):
            found = np.zeros(len(input_keys), dtype=np.bool_)
            return found, np.zeros(len(input_keys), dtype=np.int32)
        position = np.searchsorted(self._keys, input_keys)
        position[position == len(self._keys)] = 0
        found = self._keys[position] == input_keys
        return found, self._codes[position]


class ChurnCounter:
    """Counts, across the blocks of one upload, the rows shared with the parent and those
    of them whose label changed; keeps the first ``max_changes`` changes."""

    def __init__(self, parent: ParentLabels, max_changes: int) -> None:
        self._parent = parent
        self._max_changes = max_changes
        self._shared = 0
        self._changed = 0
        self._transitions: dict[tuple[int, str], int] = {}
        self._changes: list[LabelChange] = []

    def observe(
        self,
        input_keys: np.ndarray,
        labels: list[str],
        line_numbers: np.ndarray,
    ) -> None:
        """One block's kept rows: their input keys, labels and line numbers, in line order."""
        parent = self._parent
        found, old_codes = parent.lookup(input_keys)
        new_codes = np.array([parent.code(label) for label in labels], dtype=np.int32)
        changed = found & (old_codes != new_codes)
        self._shared += int(found.sum())
        rows = np.flatnonzero(changed).tolist()
        self._changed += len(rows)
        for i in rows:
            old = int(old_codes[i])
            transition = (old, labels[i])
            self._transitions[transition] = self._transitions.get(transition, 0) + 1
            if len(self._changes) < self._max_changes:
                self._changes.append(LabelChange(int(line_numbers[i]), parent.name(old), labels[i]))

    def result(self) -> LabelChurn:
        parent = self._parent
        transitions = sorted(
            ((parent.name(old), new, n) for (old, new), n in self._transitions.items()),
            key=lambda t: (-t[2], t[0], t[1]),
        )
        return LabelChurn(
            parent_version=parent.parent_version,
            shared_rows=self._shared,
            changed_rows=self._changed,
            transitions=tuple(transitions),
            changes=tuple(self._changes),
        )
