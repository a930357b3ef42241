"""The splitter keeps near-duplicate inputs in one part: real reviews and paraphrase-like edits.

A review with a few words changed is a different text, so the exact-text key alone would let
it land in another part than its original (a leak the evaluation would reward). Near-duplicate
edges join their groups; the overlap check recomputes that no near-duplicate set straddles
parts; the grouping is deterministic and can be turned off.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from services.splitter.domain import (
    DEFAULT_SPEC,
    DatasetVersionRef,
    Part,
    SplitIntegrityError,
    SplitRatios,
    SplitRow,
    SplitRows,
    SplitSpec,
    SplitStrategy,
    assign_rows,
    split_dataset,
)
from services.splitter.domain import manifest as manifest_module
from services.splitter.domain.assignment import GroupIndex
from shared.input_text import normalize_input_text
from shared.near_duplicates import near_duplicate_groups
from shared.task_types import TaskType
from tests.fixtures.datasets import rotten_tomatoes_rows

SUBSTITUTES = ("truly", "rather", "picture", "story", "somewhat", "utterly")
ORIGINALS = 300
EDITED = 60


def paraphrase(text: str, rng: random.Random) -> str:
    tokens = text.split()
    for position in rng.sample(range(len(tokens)), 2):
        tokens[position] = rng.choice([w for w in SUBSTITUTES if w != tokens[position]])
    return " ".join(tokens)


def reviews_with_paraphrases() -> SplitRows:
    """300 distinct real reviews of 15+ words, then paraphrases of the first 60 (two words
    changed), each labelled like its original."""
    seen: set[str] = set()
    originals = []
    for row in rotten_tomatoes_rows():
        key = normalize_input_text(row["text"])
        if len(key.split()) >= 15 and key not in seen:
            seen.add(key)
            originals.append((key, row["label"]))
        if len(originals) == ORIGINALS:
            break
    rng = random.Random(4)
    edited = [(normalize_input_text(paraphrase(t, rng)), label) for t, label in originals[:EDITED]]
    return SplitRows.of(
        SplitRow(f"r{i:04d}", text, label) for i, (text, label) in enumerate(originals + edited)
    )


ROWS = reviews_with_paraphrases()
VERSION = DatasetVersionRef(
    name="datasets/reviews/versions/v1",
    dataset="datasets/reviews",
    content_sha256="ab" * 32,
    artifact_uri="file:///datasets/reviews/v1.jsonl",
    task_type=TaskType.CLASSIFICATION,
    row_count=len(ROWS),
    byte_count=1,
)


def joined_pairs(groups: GroupIndex) -> int:
    return sum(groups.row_groups[i] == groups.row_groups[ORIGINALS + i] for i in range(EDITED))


@pytest.mark.parametrize("strategy", [SplitStrategy.HASH, SplitStrategy.STRATIFIED])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_paraphrases_land_in_their_originals_part(strategy: SplitStrategy, seed: int) -> None:
    spec = SplitSpec(strategy, SplitRatios(0.6, 0.2, 0.2), seed)
    groups, parts = assign_rows(ROWS, spec)
    assert groups.near_duplicates_checked
    assert joined_pairs(groups) >= EDITED - 3  # two of ~20 words changed: a few may be missed
    for i in range(EDITED):
        if groups.row_groups[i] == groups.row_groups[ORIGINALS + i]:
            assert parts[i] is parts[ORIGINALS + i]
    assert len(groups) == len(ROWS) - joined_pairs(groups)  # no unrelated reviews joined


def test_without_near_duplicate_edges_paraphrases_leak() -> None:
    """The check the edges replace: exact texts alone put some paraphrases elsewhere."""
    spec = SplitSpec(SplitStrategy.HASH, SplitRatios(0.5, 0.5, 0.0), 0)
    groups, parts = assign_rows(ROWS, spec, near_duplicate_threshold=0)
    assert not groups.near_duplicates_checked
    assert len(groups) == len(ROWS)
    assert any(parts[i] is not parts[ORIGINALS + i] for i in range(EDITED))


def test_the_grouping_is_deterministic_and_keyed_by_the_smallest_text() -> None:
    first = GroupIndex.of(ROWS)
    again = GroupIndex.of(SplitRows.of(ROWS))
    assert first == again
    for members in first.near_duplicate_texts:
        group = first.row_groups[ROWS.text_keys.index(members[0])]
        assert first.keys[group] == members[0] == min(members)
    manifest = split_dataset(VERSION, ROWS, DEFAULT_SPEC)
    assert manifest.to_bytes() == split_dataset(VERSION, ROWS, DEFAULT_SPEC).to_bytes()
    assert manifest.group_count == len(first)


def test_a_near_duplicate_pair_in_two_parts_fails_the_overlap_check(monkeypatch) -> None:
    real_assign = manifest_module.assign_rows

    def leaky_assign(rows_, spec_, **options):
        groups, parts = real_assign(rows_, spec_, **options)
        # a bug: the paraphrase of a joined pair goes elsewhere
        i = next(
            i for i in range(EDITED) if groups.row_groups[i] == groups.row_groups[ORIGINALS + i]
        )
        parts[ORIGINALS + i] = Part.VALIDATION if parts[i] is Part.TRAIN else Part.TRAIN
        return groups, parts

    monkeypatch.setattr(manifest_module, "assign_rows", leaky_assign)
    with pytest.raises(SplitIntegrityError, match="near-duplicates of"):
        split_dataset(VERSION, ROWS, DEFAULT_SPEC)


def test_explicit_groups_and_near_duplicates_join_transitively() -> None:
    rows = SplitRows.of(
        [
            SplitRow("a", ROWS.text_keys[0], "fresh", "film-1"),
            SplitRow("b", ROWS.text_keys[ORIGINALS], "fresh"),  # a paraphrase of "a"
            SplitRow("c", ROWS.text_keys[1], "rotten", "film-1"),
            SplitRow("d", ROWS.text_keys[2], "rotten", "film-2"),
        ]
    )
    groups = GroupIndex.of(rows)
    assert groups.row_groups == [0, 0, 0, 1]
    assert groups.keys == ["film-1", "film-2"]
    members: dict[int, set[str]] = defaultdict(set)
    for row_id, group in zip(rows.ids, groups.row_groups, strict=True):
        members[group].add(row_id)
    assert members == {0: {"a", "b", "c"}, 1: {"d"}}


def test_causal_lm_rows_teaching_one_answer_under_reworded_prompts_stay_in_one_part() -> None:
    """For causal LM the splitter compares prompt and completion together: two short prompts
    that share little (not near-duplicates alone) with the same long answer are one lesson."""
    answers = [
        normalize_input_text(row["text"])
        for row in rotten_tomatoes_rows()
        if len(row["text"].split()) >= 25
    ][:40]
    rows = SplitRows()
    for i, answer in enumerate(answers):
        rows.add(
            {"id": f"a-{i}", "prompt": f"Review film {i}.", "completion": answer},
            TaskType.CAUSAL_LM,
            dataset_version=VERSION.name,
            line=2 * i + 1,
        )
        rows.add(
            {"id": f"b-{i}", "prompt": f"Write a critique of movie #{i}!", "completion": answer},
            TaskType.CAUSAL_LM,
            dataset_version=VERSION.name,
            line=2 * i + 2,
        )
    prompts = rows.text_keys[:2]
    assert near_duplicate_groups(prompts) == []  # the prompts alone are not near-duplicates
    spec = SplitSpec(SplitStrategy.HASH, SplitRatios(0.5, 0.5, 0.0), 0)
    groups, parts = assign_rows(rows, spec)
    assert len(groups) == len(answers)
    for i in range(len(answers)):
        assert groups.row_groups[2 * i] == groups.row_groups[2 * i + 1]
        assert parts[2 * i] is parts[2 * i + 1]
    assert ("review film 0.", "write a critique of movie #0!") in groups.near_duplicate_texts
    unjoined, _ = assign_rows(rows, spec, near_duplicate_threshold=0)
    assert len(unjoined) == 2 * len(answers)
