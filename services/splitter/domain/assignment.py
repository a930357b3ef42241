"""Assigning groups of rows to parts: the HASH and STRATIFIED strategies.

Both work on *groups*, never on single rows, so a group can never straddle two parts. A group
is a connected set of rows: two rows are in one group when they share their normalized input
text or their explicit ``group``, or when their texts are near-duplicates
(:func:`shared.near_duplicates.near_duplicate_groups`: a paraphrase with a few words changed;
for causal LM the texts compared are prompt and completion together,
:func:`shared.input_text.near_duplicate_text`, so one answer taught under reworded prompts
stays in one part),
directly or through a chain of rows (:class:`GroupIndex`, a union-find over texts and explicit
groups, with near-duplicate texts linked). So the same text under two explicit groups joins the
two groups, and no text, no near-duplicate pair and no explicit group ever straddles parts.

Near-duplicates are looked for among at most :data:`NEAR_DUPLICATE_MAX_TEXTS` distinct texts
(MinHash costs about a millisecond per text); a larger version is grouped by exact texts and
explicit groups only, and :attr:`GroupIndex.near_duplicates_checked` says so.

Each group has a key: the smallest explicit group name among its rows, or, for a group without
explicit groups, its smallest text (its one text, unless near-duplicates joined several). Both
strategies are seeded through :func:`group_positions`: a 64-bit position of each group key
derived from ``sha256(domain tag + seed + key)``:

* HASH maps the position against cumulative ratio boundaries in ``[0, 2**64)``. A group's part
  depends on nothing but its key and the seed, so adding rows never moves existing ones, with
  one exception: a new row that links groups that were apart (its text is in one and its
  explicit group in another, or it brings an explicit group to rows of a text that had none)
  merges them, and the merged group goes where its key, the smallest group name, sends it. The
  rows of the other groups may move then: that is the leakage guard at work. A dataset where
  every explicit group keeps to its own texts splits exactly as when the group alone was the
  key.
* STRATIFIED puts each group in the stratum of its (majority) label, computes exact per-part row
  targets per stratum by the largest-remainder method, lines the stratum's groups up in
  seeded-hash order and cuts the line at the targets (a group goes where its middle row
  falls). With one row per group the per-label counts match the targets exactly; with larger
  groups they miss by less than one group.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from itertools import accumulate

from services.splitter.domain.rows import SplitRow, SplitRows
from services.splitter.domain.spec import Part, SplitSpec, SplitStrategy
from shared.near_duplicates import DEFAULT_THRESHOLD, near_duplicate_groups

#: Versions the hash: changing how positions are derived would move every row.
_HASH_DOMAIN = b"tuneline.splitter.v1/group-position\x00"
_POSITIONS = 1 << 64
#: Most distinct texts searched for near-duplicates (about 100 s on one core).
NEAR_DUPLICATE_MAX_TEXTS = 100_000


def group_positions(seed: int, keys: Iterable[str]) -> list[int]:
    """Each key's seeded position in ``[0, 2**64)``: the first 8 bytes of its SHA-256."""
    seeded = hashlib.sha256(_HASH_DOMAIN + seed.to_bytes(8, "big", signed=True))
    from_bytes = int.from_bytes
    positions: list[int] = []
    append = positions.append
    for key in keys:
        digest = seeded.copy()  # cheaper than hashing the prefix again, per group
        digest.update(key.encode())
        append(from_bytes(digest.digest()[:8], "big"))
    return positions


class _KeyUnion:
    """Union-find over the two kinds of grouping key (texts and explicit groups, kept apart:
    a group named like some text is not that text)."""

    def __init__(self) -> None:
        self.texts: dict[str, int] = {}
        self.groups: dict[str, int] = {}
        self.parent: list[int] = []

    def node(self, table: dict[str, int], key: str) -> int:
        found = table.get(key)
        if found is None:
            found = table[key] = len(self.parent)
            self.parent.append(found)
        return found

    def find(self, node: int) -> int:
        parent = self.parent
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    def union(self, first: int, second: int) -> None:
        first, second = self.find(first), self.find(second)
        if first != second:
            # the older node stays the root: deterministic, whatever the input
            self.parent[max(first, second)] = min(first, second)


@dataclass(frozen=True)
class GroupIndex:
    """The dataset's groups, and which group each row is in."""

    #: Group keys in order of first appearance: the smallest explicit group name among the
    #: group's rows, or its one text when none of them has an explicit group.
    keys: list[str]
    #: For each row (in dataset order), the index of its group in ``keys``.
    row_groups: list[int]
    #: The sets of distinct texts that near-duplicate edges joined (each sorted, two or more).
    near_duplicate_texts: tuple[tuple[str, ...], ...] = ()
    #: False when the version had too many distinct texts for the near-duplicate search (or
    #: it was turned off): only exact texts and explicit groups joined rows.
    near_duplicates_checked: bool = True

    @classmethod
    def of(
        cls,
        rows: SplitRows,
        *,
        near_duplicate_threshold: float = DEFAULT_THRESHOLD,
        near_duplicate_max_texts: int = NEAR_DUPLICATE_MAX_TEXTS,
    ) -> GroupIndex:
        # near-duplicates are judged on the text keys, or for causal LM on prompt + completion;
        # either way a near-duplicate set is recorded as the text keys of its rows
        compared = rows.similarity_texts or rows.text_keys
        keys_of: dict[str, set[str]] = {}
        for text, key in zip(compared, rows.text_keys, strict=True):
            keys_of.setdefault(text, set()).add(key)
        texts = list(keys_of)  # distinct, in order of first appearance
        checked = near_duplicate_threshold > 0 and len(texts) <= near_duplicate_max_texts
        similar = (
            tuple(
                members
                for group in near_duplicate_groups(texts, threshold=near_duplicate_threshold)
                if len(members := tuple(sorted({k for i in group for k in keys_of[texts[i]]}))) > 1
            )
            if checked
            else ()
        )
        if not similar and not any(rows.groups):  # a group is a text
            by_key: dict[str, int] = {}
            # setdefault hands an existing key its index, a new key the next one
            row_groups = [by_key.setdefault(key, len(by_key)) for key in rows.text_keys]
            return cls(list(by_key), row_groups, similar, checked)
        keys = _KeyUnion()
        row_nodes: list[int] = []
        for text, group in zip(rows.text_keys, rows.groups, strict=True):
            node = keys.node(keys.texts, text)
            if group is not None:
                keys.union(node, keys.node(keys.groups, group))
            row_nodes.append(node)
        for members in similar:
            first = keys.texts[members[0]]
            for text in members[1:]:
                keys.union(first, keys.texts[text])
        name_of: dict[int, str] = {}  # root → the group's key
        for group, node in keys.groups.items():
            root = keys.find(node)
            if root not in name_of or group < name_of[root]:
                name_of[root] = group
        no_groups: dict[int, str] = {}  # roots without explicit groups → their smallest text
        for text, node in keys.texts.items():
            root = keys.find(node)
            if root not in name_of and (root not in no_groups or text < no_groups[root]):
                no_groups[root] = text
        name_of.update(no_groups)
        index_of: dict[int, int] = {}
        names: list[str] = []
        row_groups = []
        for node in row_nodes:
            root = keys.find(node)
            index = index_of.get(root)
            if index is None:
                index = index_of[root] = len(names)
                names.append(name_of[root])
            row_groups.append(index)
        return cls(names, row_groups, similar, checked)

    def __len__(self) -> int:
        return len(self.keys)

    def sizes(self) -> list[int]:
        """Rows per group."""
        counts = Counter(self.row_groups)
        return [counts[group] for group in range(len(self.keys))]

    def strata(self, rows: SplitRows) -> list[str | None]:
        """Each group's label for stratification: its majority label (ties: the smallest).

        Nearly every group is label-pure; a mixed one (the same text labelled differently,
        or an explicit group spanning labels) is stratified by what most of its rows say.
        """
        row_groups, labels = self.row_groups, rows.labels
        label_of = dict(zip(row_groups, labels, strict=True))  # each group's last row's label
        mixed = {
            group
            for group, label in zip(row_groups, labels, strict=True)
            if label_of[group] != label
        }
        if mixed:  # rare groups carry several labels: count theirs only
            label_counts = Counter(
                pair for pair in zip(row_groups, labels, strict=True) if pair[0] in mixed
            )
            best: dict[int, tuple[int, str]] = {}
            for (group, label), count in label_counts.items():
                # most rows first; among equals, the smallest label (None sorts as "")
                rank = (-count, label or "")
                if group not in best or rank < best[group]:
                    best[group] = rank
                    label_of[group] = label
        return [label_of[group] for group in range(len(self.keys))]


def _hash_boundaries(spec: SplitSpec) -> list[tuple[int, Part]]:
    """Upper position bounds per part in use; the last one is always exactly ``2**64``."""
    shares = spec.ratios.exact_shares()
    boundaries: list[tuple[int, Part]] = []
    cumulative = Fraction(0)
    for part in spec.parts_in_use:
        cumulative += shares[part]
        boundaries.append((math.floor(cumulative * _POSITIONS), part))
    return boundaries


def assign_groups_by_hash(groups: GroupIndex, spec: SplitSpec) -> list[Part]:
    """Each group's part from its seeded position alone (append-stable)."""
    boundaries = _hash_boundaries(spec)
    bounds = [bound for bound, _ in boundaries[:-1]]  # the last bound, 2**64, holds every position
    parts = [part for _, part in boundaries]
    return [
        parts[bisect_right(bounds, position)]
        for position in group_positions(spec.seed, groups.keys)
    ]


def row_targets(rows: int, spec: SplitSpec) -> dict[Part, int]:
    """Rows per part for a stratum of ``rows`` rows: largest-remainder rounding of the ratios.

    The targets add up to ``rows`` exactly; ties in the remainders go to the earlier part.
    """
    shares = spec.ratios.exact_shares()
    in_use = spec.parts_in_use
    quotas = {part: rows * shares[part] for part in in_use}
    targets = {part: math.floor(quota) for part, quota in quotas.items()}
    left = rows - sum(targets.values())
    by_remainder = sorted(in_use, key=lambda p: (-(quotas[p] - targets[p]), in_use.index(p)))
    for part in by_remainder[:left]:
        targets[part] += 1
    return targets


def assign_groups_stratified(groups: GroupIndex, rows: SplitRows, spec: SplitSpec) -> list[Part]:
    """Per-label exact ratios, at group granularity, in a seeded order.

    Each stratum's groups are lined up in seeded order and the line is cut where the running
    row count crosses each part's target: a group goes to the part its middle row falls in.
    One-row groups therefore meet the targets exactly, and no part misses its target by a
    whole group.
    """
    members_of: dict[str | None, list[int]] = {}
    for group, stratum in enumerate(groups.strata(rows)):
        members_of.setdefault(stratum, []).append(group)
    positions = group_positions(spec.seed, groups.keys)
    sizes = groups.sizes()
    in_use = spec.parts_in_use
    assigned_parts: list[Part] = [Part.TRAIN] * len(groups)
    for members in members_of.values():  # strata are independent: their order does not matter
        # seeded order; a (astronomically unlikely) tie of positions keeps first-appearance
        # order, since the sort is stable: still deterministic for the same content
        order = sorted(members, key=positions.__getitem__)
        order_sizes = [sizes[group] for group in order]
        targets = row_targets(sum(order_sizes), spec)
        # doubled, so that middles (start + size / 2) stay integers
        bounds = list(accumulate(2 * targets[part] for part in in_use))[:-1]
        # where each group starts (the running total before it; the extra last one is the total)
        starts = accumulate(order_sizes, initial=0)
        middles = [2 * start + size for start, size in zip(starts, order_sizes, strict=False)]
        for group, middle in zip(order, middles, strict=True):
            assigned_parts[group] = in_use[bisect_right(bounds, middle)]
    return assigned_parts


def assign_rows(
    rows: SplitRows | Iterable[SplitRow],
    spec: SplitSpec,
    *,
    near_duplicate_threshold: float = DEFAULT_THRESHOLD,
) -> tuple[GroupIndex, list[Part]]:
    """The groups of ``rows`` and each row's part (aligned with ``rows``); 0 as the threshold
    groups by exact texts and explicit groups only."""
    if not isinstance(rows, SplitRows):
        rows = SplitRows.of(rows)
    groups = GroupIndex.of(rows, near_duplicate_threshold=near_duplicate_threshold)
    if spec.strategy is SplitStrategy.HASH:
        group_parts = assign_groups_by_hash(groups, spec)
    else:
        group_parts = assign_groups_stratified(groups, rows, spec)
    return groups, [group_parts[group] for group in groups.row_groups]
