"""What the splitter needs of a dataset row: its id, its group key and its label.

The group key is the leakage guard (COMMON.md, "Group key"): the row's ``group`` when it has
one, else its normalized input text (:func:`shared.input_text.normalize_input_text`), so
that exact and near-exact repeats of an input (case, Unicode form, whitespace) can never sit
in train and validation at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from shared.errors import FailedPrecondition, PreconditionViolation
from shared.input_text import normalize_input_text


class TaskType(StrEnum):
    """The dataset's task type, which says where a row's input text is."""

    CLASSIFICATION = "CLASSIFICATION"
    CAUSAL_LM = "CAUSAL_LM"


class SplitRow(NamedTuple):
    """One dataset row as the splitter sees it."""

    id: str
    group_key: str
    #: The row's label for CLASSIFICATION; ``None`` for CAUSAL_LM.
    label: str | None


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


def group_key(row: Mapping[str, object], task_type: TaskType) -> str:
    """The row's group key: its non-empty ``group``, else its normalized input text.

    CLASSIFICATION input is ``text``; CAUSAL_LM input is ``prompt``, or for chat ``messages``
    the contents of every non-assistant message joined by newlines. Raises ``ValueError``
    when the row lacks its input.
    """
    group = row.get("group")
    if isinstance(group, str) and group:
        return group
    return normalize_input_text(_input_text(row, task_type))


def split_row(
    row: Mapping[str, object], task_type: TaskType, *, dataset_version: str, line: int
) -> SplitRow:
    """Reduce one canonical dataset row (line ``line``, 1-based) to a :class:`SplitRow`."""
    try:
        row_id = _string_field(row, "id")
        key = group_key(row, task_type)
        label = _string_field(row, "label") if task_type is TaskType.CLASSIFICATION else None
    except ValueError as error:
        raise MalformedDatasetRow(dataset_version, line, str(error)) from None
    return SplitRow(row_id, key, label)


@dataclass
class SplitRows:
    """A version's rows as three columns, in dataset order.

    Columns rather than a million :class:`SplitRow` tuples: strings in lists are invisible to
    the cyclic garbage collector, whereas a million live tuples would be walked by every full
    collection while a split runs (and cost ~64 MB more).
    """

    ids: list[str] = field(default_factory=list)
    group_keys: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)

    @classmethod
    def of(cls, rows: Iterable[SplitRow]) -> SplitRows:
        columns = cls()
        for row in rows:
            columns.append(row)
        return columns

    def append(self, row: SplitRow) -> None:
        self.ids.append(row[0])
        self.group_keys.append(row[1])
        self.labels.append(row[2])

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
                self.group_keys.append(
                    group if type(group) is str and group else normalize_input_text(text)
                )
                self.labels.append(label)
                return
        self.append(split_row(row, task_type, dataset_version=dataset_version, line=line))

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[SplitRow]:
        for row in zip(self.ids, self.group_keys, self.labels, strict=True):
            yield SplitRow(*row)
