"""What the splitter needs of a dataset row: its id, its two grouping keys and its label.

The grouping keys are the leakage guard (COMMON.md, "Group key"): the row's normalized input
text (:func:`shared.input_text.normalize_input_text`), so that exact and near-exact repeats of
an input (case, Unicode form, whitespace) can never sit in train and validation at once, and
its explicit ``group``, when it has one. Rows that share either key belong together, and so,
transitively, do rows linked through a chain of shared keys (see
:class:`services.splitter.domain.assignment.GroupIndex`): an explicit group joins rows, it
never separates two rows with the same text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from shared.errors import FailedPrecondition, PreconditionViolation
from shared.input_text import near_duplicate_text, normalize_input_text
from shared.task_types import TaskType


class SplitRow(NamedTuple):
    """One dataset row as the splitter sees it."""

    id: str
    #: The row's normalized input text (see :func:`text_key`).
    text_key: str
    #: The row's label for CLASSIFICATION; ``None`` for CAUSAL_LM.
    label: str | None
    #: The row's explicit, non-empty ``group``; ``None`` when it has none.
    group: str | None = None


class MalformedDatasetRow(FailedPrecondition):
    """A canonical dataset row lacks what the splitter needs (the content cannot be split)."""

    def __init__(self, dataset_version: str, line: int, problem: str) -> None:
        super().__init__(
            f"{dataset_version} cannot be split: line {line}: {problem}",
            [PreconditionViolation("MALFORMED_DATASET_ROW", f"{dataset_version}#L{line}", problem)],
        )
        self.line = line


def _string_field(row: Mapping[str, object], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} is missing or not a string")
    return value


def _input_text(row: Mapping[str, object], task_type: TaskType) -> str:
    if task_type is TaskType.CLASSIFICATION:
        return _string_field(row, "text")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list):
            raise ValueError("field 'messages' is not a list")
        contents: list[str] = []
        for message in messages:
            if not isinstance(message, Mapping):
                raise ValueError("a message is not an object")
            if message.get("role") != "assistant":
                contents.append(_string_field(message, "content"))
        return "\n".join(contents)
    return _string_field(row, "prompt")


def text_key(row: Mapping[str, object], task_type: TaskType) -> str:
    """The row's normalized input text.

    CLASSIFICATION input is ``text``; CAUSAL_LM input is ``prompt``, or for chat ``messages``
    the contents of every non-assistant message joined by newlines. Raises ``ValueError``
    when the row lacks its input.
    """
    return normalize_input_text(_input_text(row, task_type))


def explicit_group(row: Mapping[str, object]) -> str | None:
    """The row's ``group`` when it is a non-empty string, else ``None``."""
    group = row.get("group")
    return group if isinstance(group, str) and group else None


def split_row(
    row: Mapping[str, object], task_type: TaskType, *, dataset_version: str, line: int
) -> SplitRow:
    """Reduce one canonical dataset row (line ``line``, 1-based) to a :class:`SplitRow`."""
    try:
        row_id = _string_field(row, "id")
        key = text_key(row, task_type)
        label = _string_field(row, "label") if task_type is TaskType.CLASSIFICATION else None
    except ValueError as error:
        raise MalformedDatasetRow(dataset_version, line, str(error)) from None
    return SplitRow(row_id, key, label, explicit_group(row))


@dataclass
class SplitRows:
    """A version's rows as three columns, in dataset order.

    Columns rather than a million :class:`SplitRow` tuples: strings in lists are invisible to
    the cyclic garbage collector, whereas a million live tuples would be walked by every full
    collection while a split runs (and cost ~64 MB more).
    """

    ids: list[str] = field(default_factory=list)
    text_keys: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    #: Explicit groups; ``None`` for a row without one.
    groups: list[str | None] = field(default_factory=list)
    #: CAUSAL_LM only: each row's prompt and completion, normalized
    #: (:func:`shared.input_text.near_duplicate_text`), on which near-duplicates are judged;
    #: empty otherwise (the text keys are judged).
    similarity_texts: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, rows: Iterable[SplitRow]) -> SplitRows:
        columns = cls()
        for row in rows:
            columns.append(row)
        return columns

    def append(self, row: SplitRow) -> None:
        self.ids.append(row[0])
        self.text_keys.append(row[1])
        self.labels.append(row[2])
        self.groups.append(row[3])

    def add(
        self, row: Mapping[str, object], task_type: TaskType, *, dataset_version: str, line: int
    ) -> None:
        """Append one canonical dataset row, reduced as :func:`split_row` reduces it."""
        if task_type is TaskType.CLASSIFICATION:
            # the well-formed classification row, inlined: this runs for every row split
            row_id, text, label = row.get("id"), row.get("text"), row.get("label")
            if type(row_id) is str and type(text) is str and type(label) is str:
                group = row.get("group")
                self.ids.append(row_id)
                self.text_keys.append(normalize_input_text(text))
                self.labels.append(label)
                self.groups.append(group if type(group) is str and group else None)
                return
        reduced = split_row(row, task_type, dataset_version=dataset_version, line=line)
        self.append(reduced)
        if task_type is TaskType.CAUSAL_LM:
            self.similarity_texts.append(near_duplicate_text(row) or reduced.text_key)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[SplitRow]:
        for row in zip(self.ids, self.text_keys, self.labels, self.groups, strict=True):
            yield SplitRow(*row)
