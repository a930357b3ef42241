"""The ``near_duplicates`` check of an upload: rows whose inputs nearly repeat other rows'.

:class:`NearDuplicateRows` takes the near-duplicate text of each kept row, in line order
(:func:`shared.input_text.near_duplicate_text`: the normalized input; for causal LM, prompt
and completion together), and at the end groups them with
:func:`shared.near_duplicates.near_duplicate_groups`. Rows with the same text are one text here
(exact repeats have their own rules); a group is reported when it holds at least two different
texts, with the line numbers of all its rows.

Unlike the other cross-row rules this one keeps the texts themselves, and MinHash/LSH costs
about 0.4 ms of CPU per row of ~450 characters, so it runs only up to ``max_rows`` rows; past
that the texts are dropped and the check reports that it was skipped.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

from shared.near_duplicates import near_duplicate_groups

#: Rows up to which an upload is checked by default (about 40 s of CPU at most).
DEFAULT_MAX_ROWS = 100_000
#: Groups quoted (their line numbers) in a ``near_duplicates`` message.
GROUPS_QUOTED = 5
#: Lines quoted per group.
LINES_QUOTED = 5


@dataclass(frozen=True)
class NearDuplicateGroups:
    """The near-duplicate groups found: each group's line numbers, groups by first line."""

    groups: tuple[tuple[int, ...], ...]

    @property
    def row_count(self) -> int:
        return sum(len(group) for group in self.groups)

    def lines(self) -> list[int]:
        """Every grouped row's line number, ascending."""
        return sorted(line for group in self.groups for line in group)

    def describe(self) -> str:
        quoted = "; ".join(
            "lines "
            + ", ".join(map(str, group[:LINES_QUOTED]))
            + (f" (+{len(group) - LINES_QUOTED})" if len(group) > LINES_QUOTED else "")
            for group in self.groups[:GROUPS_QUOTED]
        )
        more = len(self.groups) - GROUPS_QUOTED
        return quoted + (f"; {more} more group(s)" if more > 0 else "")


class NearDuplicateRows:
    """Collects kept rows' normalized inputs, then groups the near-duplicate ones."""

    def __init__(self, threshold: float, max_rows: int) -> None:
        self.threshold = threshold
        self.max_rows = max_rows
        self._lines_of: dict[str, list[int]] | None = {}
        self._rows = 0

    @property
    def skipped(self) -> bool:
        """True once more rows than ``max_rows`` were seen: the texts were dropped."""
        return self._lines_of is None

    def add(self, line: int, text_key: str) -> None:
        self._rows += 1
        if self._lines_of is None:
            return
        if self._rows > self.max_rows:
            self._lines_of = None  # over budget: free the texts now, not at the end
            return
        self._lines_of.setdefault(text_key, []).append(line)

    def groups(self, executor: Executor | None = None) -> NearDuplicateGroups:
        """The groups; ``executor``'s worker processes compute the signatures, when given."""
        if self._lines_of is None:
            return NearDuplicateGroups(())
        texts = list(self._lines_of)
        groups = [
            tuple(sorted(line for index in group for line in self._lines_of[texts[index]]))
            for group in near_duplicate_groups(texts, threshold=self.threshold, executor=executor)
        ]
        return NearDuplicateGroups(tuple(sorted(groups)))
