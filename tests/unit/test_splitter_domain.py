"""The splitter's domain: grouping keys, spec validation, both strategies, the manifest.

Property tests (hypothesis) cover what must hold for *every* dataset: splits are deterministic,
disjoint, cover every row, keep groups together (no text and no explicit group ever straddles
parts, however the two keys chain rows together), HASH is append-stable (a row moves only when
new rows merge its group into another), and STRATIFIED meets its per-label targets (exactly
with one row per group, within a group's size otherwise).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.splitter.domain import (
    DEFAULT_SPEC,
    DatasetVersionRef,
    MalformedDatasetRow,
    Part,
    SplitIntegrityError,
    SplitRatios,
    SplitRow,
    SplitRows,
    SplitSpec,
    SplitStrategy,
    UnsplittableVersion,
    assign_rows,
    explicit_group,
    group_positions,
    split_dataset,
    split_id_for,
    split_row,
    text_key,
    validate_spec,
)
from services.splitter.domain import manifest as manifest_module
from services.splitter.domain.assignment import GroupIndex, row_targets
from shared.errors import InvalidArgument
from shared.input_text import normalize_input_text
from shared.task_types import TaskType

VERSION = DatasetVersionRef(
    name="datasets/reviews/versions/v1",
    dataset="datasets/reviews",
    content_sha256="ab" * 32,
    artifact_uri="file:///data/dataset/artifacts/reviews/v1.jsonl",
    task_type=TaskType.CLASSIFICATION,
    row_count=0,
    byte_count=0,
)
THREE_PARTS = SplitRatios(train=0.7, validation=0.2, test=0.1)
TWO_PARTS = SplitRatios(train=0.8, validation=0.2)


# -- group keys -------------------------------------------------------------------------------


def test_a_row_keeps_its_normalized_text_and_its_explicit_group_apart() -> None:
    classification = TaskType.CLASSIFICATION
    row = {"id": "r1", "text": "A  B", "label": "x", "group": "movie-1"}
    assert text_key(row, classification) == "a b"
    assert explicit_group(row) == "movie-1"
    assert explicit_group({"text": "A  B", "label": "x", "group": ""}) is None
    assert explicit_group({"text": "A  B", "label": "x"}) is None
    reduced = SplitRow("r1", "a b", "x", "movie-1")
    assert split_row(row, classification, dataset_version=VERSION.name, line=1) == reduced
    rows = SplitRows()
    rows.add(row, classification, dataset_version=VERSION.name, line=1)  # the inlined path
    assert list(rows) == [reduced]


def test_text_key_of_causal_lm_rows_uses_prompt_or_non_assistant_messages() -> None:
    causal = TaskType.CAUSAL_LM
    assert text_key({"prompt": " What is  2+2? ", "completion": "4"}, causal) == "what is 2+2?"
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "Four."},
            {"role": "user", "content": "And 3+3?"},
        ]
    }
    # the answers do not matter: the same question asked twice is the same group
    assert text_key(chat, causal) == "be brief. what is 2+2? and 3+3?"


@pytest.mark.parametrize(
    ("row", "task_type", "problem"),
    [
        ({"id": "r1", "label": "x"}, TaskType.CLASSIFICATION, "'text'"),
        ({"id": "r1", "text": 3, "label": "x"}, TaskType.CLASSIFICATION, "'text'"),
        ({"id": "r1", "text": "t"}, TaskType.CLASSIFICATION, "'label'"),
        ({"text": "t", "label": "x"}, TaskType.CLASSIFICATION, "'id'"),
        ({"id": "r1", "completion": "c"}, TaskType.CAUSAL_LM, "'prompt'"),
        ({"id": "r1", "messages": "hi"}, TaskType.CAUSAL_LM, "'messages'"),
        ({"id": "r1", "messages": [{"role": "user"}]}, TaskType.CAUSAL_LM, "'content'"),
    ],
)
def test_split_row_names_the_line_and_the_missing_field(row, task_type, problem) -> None:
    with pytest.raises(MalformedDatasetRow) as raised:
        split_row(row, task_type, dataset_version=VERSION.name, line=7)
    assert raised.value.line == 7
    assert problem in raised.value.message
    assert f"{VERSION.name}#L7" == raised.value.violations[0].subject


# -- spec validation and split ids ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratios", "violations"),
    [
        (SplitRatios(0.8, 0.1), {("spec.ratios", "RATIOS_DO_NOT_SUM_TO_ONE")}),
        (SplitRatios(0.6, 0.3, 0.3), {("spec.ratios", "RATIOS_DO_NOT_SUM_TO_ONE")}),
        (SplitRatios(1.0, 0.0), {("spec.ratios.validation", "RATIO_REQUIRED")}),
        (SplitRatios(0.0, 1.0), {("spec.ratios.train", "RATIO_REQUIRED")}),
        (
            SplitRatios(1.2, -0.2),
            {
                ("spec.ratios.train", "RATIO_OUT_OF_RANGE"),
                ("spec.ratios.validation", "RATIO_OUT_OF_RANGE"),
            },
        ),
        (SplitRatios(0.8, 0.3, -0.1), {("spec.ratios.test", "RATIO_OUT_OF_RANGE")}),
        (SplitRatios(math.nan, 0.2), {("spec.ratios.train", "NOT_FINITE")}),
        (SplitRatios(0.8, math.inf), {("spec.ratios.validation", "NOT_FINITE")}),
        (
            SplitRatios(0.0, 0.0),
            {
                ("spec.ratios.train", "RATIO_REQUIRED"),
                ("spec.ratios.validation", "RATIO_REQUIRED"),
                ("spec.ratios", "RATIOS_DO_NOT_SUM_TO_ONE"),
            },
        ),
    ],
)
def test_invalid_ratios_are_rejected_with_every_violation(ratios, violations) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_spec(SplitSpec(ratios=ratios), field_prefix="spec.")
    assert {(v.field, v.reason) for v in raised.value.violations} == violations


def test_a_seed_beyond_64_bits_is_rejected_under_the_callers_prefix() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_spec(SplitSpec(seed=2**63), field_prefix="split_policy.spec.")
    assert [(v.field, v.reason) for v in raised.value.violations] == [
        ("split_policy.spec.seed", "OUT_OF_RANGE")
    ]


@pytest.mark.parametrize(
    "ratios",
    [SplitRatios(0.7, 0.2, 0.1), SplitRatios(0.8, 0.2), SplitRatios(0.5, 0.5), THREE_PARTS],
)
def test_valid_ratios_pass(ratios) -> None:
    validate_spec(SplitSpec(ratios=ratios, seed=-(2**63)), field_prefix="spec.")


def test_split_id_is_a_function_of_version_and_resolved_spec() -> None:
    first = split_id_for(VERSION.name, DEFAULT_SPEC)
    assert first == split_id_for(VERSION.name, SplitSpec())
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,61}[a-z0-9]", first)
    others = {
        split_id_for("datasets/reviews/versions/v2", DEFAULT_SPEC),
        split_id_for(VERSION.name, SplitSpec(seed=1)),
        split_id_for(VERSION.name, SplitSpec(strategy=SplitStrategy.STRATIFIED)),
        split_id_for(VERSION.name, SplitSpec(ratios=THREE_PARTS)),
    }
    assert first not in others
    assert len(others) == 4


# -- strategies: properties -------------------------------------------------------------------

labels = st.sampled_from(["neg", "pos", "neutral"])
specs = st.builds(
    SplitSpec,
    strategy=st.sampled_from(list(SplitStrategy)),
    ratios=st.sampled_from([TWO_PARTS, THREE_PARTS, SplitRatios(0.5, 0.5)]),
    seed=st.integers(-(2**63), 2**63 - 1),
)


@st.composite
def datasets(draw, *, max_rows: int = 120, label_pure_groups: bool = False) -> list[SplitRow]:
    """Rows whose group keys repeat (so groups have several rows) in arbitrary order."""
    count = draw(st.integers(0, max_rows))
    group_ids = draw(st.lists(st.integers(0, max(1, count // 2)), min_size=count, max_size=count))
    group_labels = {g: draw(labels) for g in set(group_ids)}
    return [
        SplitRow(f"r{i}", f"group {g}", group_labels[g] if label_pure_groups else draw(labels))
        for i, g in enumerate(group_ids)
    ]


def _parts_by_row(rows: list[SplitRow], spec: SplitSpec) -> dict[str, Part]:
    _, parts = assign_rows(rows, spec)
    return {row.id: part for row, part in zip(rows, parts, strict=True)}


@settings(max_examples=150, deadline=None)
@given(rows=datasets(), spec=specs)
def test_every_row_lands_in_exactly_one_used_part_and_groups_stay_together(rows, spec) -> None:
    groups, parts = assign_rows(rows, spec)
    assert len(parts) == len(rows)
    assert set(parts) <= set(spec.parts_in_use)
    part_of_group: dict[str, set[Part]] = defaultdict(set)
    for row, part in zip(rows, parts, strict=True):
        part_of_group[row.text_key].add(part)
    assert all(len(found) == 1 for found in part_of_group.values())
    assert len(groups) == len(part_of_group)


@settings(max_examples=100, deadline=None)
@given(rows=datasets(), spec=specs)
def test_assignment_is_deterministic_and_independent_of_row_order(rows, spec) -> None:
    assert _parts_by_row(rows, spec) == _parts_by_row(list(rows), spec)
    if spec.strategy is SplitStrategy.HASH:
        # HASH: a row's part depends on its key and the seed, not on where the row is
        assert _parts_by_row(rows[::-1], spec) == _parts_by_row(rows, spec)


@settings(max_examples=150, deadline=None)
@given(
    rows=datasets(),
    added=datasets(max_rows=60),
    ratios=st.sampled_from([TWO_PARTS, THREE_PARTS]),
    seed=st.integers(-(2**63), 2**63 - 1),
)
def test_hash_is_append_stable(rows, added, ratios, seed) -> None:
    spec = SplitSpec(strategy=SplitStrategy.HASH, ratios=ratios, seed=seed)
    # new rows (some in new groups, some joining existing ones) never move an existing row
    grown = rows + [row._replace(id=f"new-{row.id}") for row in added]
    before, after = _parts_by_row(rows, spec), _parts_by_row(grown, spec)
    assert all(after[row_id] is part for row_id, part in before.items())


@settings(max_examples=150, deadline=None)
@given(
    per_label=st.dictionaries(labels, st.integers(1, 80), min_size=1),
    ratios=st.sampled_from([TWO_PARTS, THREE_PARTS, SplitRatios(0.34, 0.33, 0.33)]),
    seed=st.integers(-(2**63), 2**63 - 1),
)
def test_stratified_meets_per_label_targets_exactly_with_one_row_per_group(
    per_label, ratios, seed
) -> None:
    rows = [
        SplitRow(f"{label}-{i}", f"{label} text {i}", label)
        for label, count in per_label.items()
        for i in range(count)
    ]
    spec = SplitSpec(strategy=SplitStrategy.STRATIFIED, ratios=ratios, seed=seed)
    _, parts = assign_rows(rows, spec)
    counted = Counter(zip((row.label for row in rows), parts, strict=True))
    for label, count in per_label.items():
        targets = row_targets(count, spec)
        assert sum(targets.values()) == count
        for part in spec.parts_in_use:
            assert counted[label, part] == targets[part], (label, part, targets)
            # largest-remainder rounding: never more than one row off the exact share
            assert abs(targets[part] - count * ratios.of(part) / 1.0) < 1


@settings(max_examples=150, deadline=None)
@given(rows=datasets(label_pure_groups=True), ratios=st.sampled_from([TWO_PARTS, THREE_PARTS]))
def test_stratified_misses_targets_by_less_than_a_group(rows, ratios) -> None:
    spec = SplitSpec(strategy=SplitStrategy.STRATIFIED, ratios=ratios, seed=7)
    _, parts = assign_rows(rows, spec)
    sizes = Counter(row.text_key for row in rows)
    for label in {row.label for row in rows}:
        label_rows = [
            (row, part) for row, part in zip(rows, parts, strict=True) if row.label == label
        ]
        largest = max(sizes[row.text_key] for row, _ in label_rows)
        targets = row_targets(len(label_rows), spec)
        counted = Counter(part for _, part in label_rows)
        others = len(spec.parts_in_use) - 1
        for part in spec.parts_in_use:
            assert counted[part] - targets[part] <= largest - 1
            assert targets[part] - counted[part] <= others * (largest - 1)


@st.composite
def grouped_datasets(draw, *, max_rows: int = 120, prefix: str = "r") -> list[SplitRow]:
    """Rows whose texts and explicit groups both repeat and cross: the same text under several
    groups, one group over several texts, rows with no group among them."""
    count = draw(st.integers(0, max_rows))
    texts = st.integers(0, max(1, count // 2)).map(lambda t: f"text {t}")
    groups = st.none() | st.integers(0, max(1, count // 4)).map(lambda g: f"g{g}")
    return [SplitRow(f"{prefix}{i}", draw(texts), draw(labels), draw(groups)) for i in range(count)]


def _straddling(rows: list[SplitRow], parts: list[Part]) -> list[str]:
    """Texts and explicit groups with rows in more than one part."""
    found: dict[str, set[Part]] = defaultdict(set)
    for row, part in zip(rows, parts, strict=True):
        found[f"text {row.text_key}"].add(part)
        if row.group is not None:
            found[f"group {row.group}"].add(part)
    return sorted(key for key, where in found.items() if len(where) > 1)


@settings(max_examples=200, deadline=None)
@given(rows=grouped_datasets(), spec=specs)
def test_no_text_and_no_explicit_group_ever_straddles_parts(rows, spec) -> None:
    groups, parts = assign_rows(rows, spec)
    assert _straddling(rows, parts) == []
    assert set(parts) <= set(spec.parts_in_use)
    # a group is exactly what the two keys chain together: rows of one group share a part
    assert len(groups.row_groups) == len(rows)
    assert _parts_by_row(rows, spec) == _parts_by_row(list(rows), spec)  # deterministic
    if spec.strategy is SplitStrategy.HASH:
        assert _parts_by_row(rows[::-1], spec) == _parts_by_row(rows, spec)


@settings(max_examples=150, deadline=None)
@given(rows=grouped_datasets(), spec=specs)
def test_the_manifest_of_grouped_rows_passes_its_own_overlap_check(rows, spec) -> None:
    try:
        manifest = split_dataset(VERSION, rows, spec)
    except UnsplittableVersion:
        return  # too few groups for the parts: refused, not leaked
    assert manifest.overlap_count == 0
    groups, _ = assign_rows(rows, spec)
    assert manifest.group_count == len(groups) == sum(s.groups for s in manifest.stats)


@settings(max_examples=150, deadline=None)
@given(
    rows=grouped_datasets(),
    added=grouped_datasets(max_rows=40, prefix="new-"),
    ratios=st.sampled_from([TWO_PARTS, THREE_PARTS]),
    seed=st.integers(-(2**63), 2**63 - 1),
)
def test_hash_moves_a_grouped_row_only_when_new_rows_merge_its_group(
    rows, added, ratios, seed
) -> None:
    spec = SplitSpec(strategy=SplitStrategy.HASH, ratios=ratios, seed=seed)
    grown = rows + added
    before_groups, before = assign_rows(rows, spec)
    after_groups, after = assign_rows(grown, spec)
    for index in range(len(rows)):
        key_before = before_groups.keys[before_groups.row_groups[index]]
        key_after = after_groups.keys[after_groups.row_groups[index]]
        if key_before == key_after:  # its group kept its key: it did not move
            assert after[index] is before[index]
    # rows with texts and groups of their own never move anything
    fresh = [row._replace(text_key=f"fresh {row.text_key}", group=None) for row in added]
    _, with_fresh = assign_rows(rows + fresh, spec)
    assert with_fresh[: len(rows)] == before


def test_the_same_text_under_two_explicit_groups_stays_in_one_part() -> None:
    rows = [
        SplitRow("a", "the very same review", "pos", "movie-1"),
        SplitRow("b", "the very same review", "pos", "movie-2"),
        SplitRow("c", "another review of movie 2", "neg", "movie-2"),
        SplitRow("d", "no group", "neg"),
    ]
    for seed in range(20):
        for strategy in SplitStrategy:
            spec = SplitSpec(strategy=strategy, ratios=TWO_PARTS, seed=seed)
            groups, parts = assign_rows(rows, spec)
            assert groups.keys == ["movie-1", "no group"]  # the smallest group name keys it
            assert parts[0] is parts[1] is parts[2], (seed, strategy)


def test_a_dataset_whose_groups_keep_to_their_texts_splits_as_by_group_alone() -> None:
    """Append-stability across the change: when no text crosses groups, the group name is the
    group's key, exactly as when the explicit group replaced the text."""
    rows = [
        SplitRow(f"r{i}", f"text {i}", "pos", f"g{i // 3}" if i % 2 else None) for i in range(90)
    ]
    spec = SplitSpec(ratios=THREE_PARTS, seed=5)
    groups, parts = assign_rows(rows, spec)
    by_key = dict(zip(groups.keys, group_positions(spec.seed, groups.keys), strict=True))
    for row, part in zip(rows, parts, strict=True):
        key = row.group if row.group is not None else row.text_key
        only = assign_rows([SplitRow(row.id, key, row.label)], spec)[1][0]
        assert part is only
        assert key in by_key


def test_hash_ratios_hold_in_expectation_and_the_seed_matters() -> None:
    rows = [SplitRow(f"r{i}", f"text {i}", None) for i in range(20_000)]
    seeded = {}
    for seed in (0, 1):
        parts = _parts_by_row(rows, SplitSpec(ratios=THREE_PARTS, seed=seed))
        shares = Counter(parts.values())
        assert abs(shares[Part.TRAIN] / len(rows) - 0.7) < 0.015
        assert abs(shares[Part.VALIDATION] / len(rows) - 0.2) < 0.015
        assert abs(shares[Part.TEST] / len(rows) - 0.1) < 0.015
        seeded[seed] = parts
    moved = sum(seeded[0][row.id] is not seeded[1][row.id] for row in rows)
    assert moved > len(rows) * 0.3, "another seed is another split"


# -- the manifest -----------------------------------------------------------------------------


def _labelled_rows(count: int) -> list[SplitRow]:
    # every fifth text repeats an earlier one, as a near-duplicate: same group
    return [
        SplitRow(f"r{i:04d}", normalize_input_text(f"Review  {i - 3 if i % 5 == 4 else i}"), "pos")
        if i % 3
        else SplitRow(
            f"r{i:04d}", normalize_input_text(f"review {i - 3 if i % 5 == 4 else i}"), "neg"
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("strategy", list(SplitStrategy))
def test_manifest_has_the_agreed_format_and_consistent_stats(strategy) -> None:
    rows = _labelled_rows(300)
    spec = SplitSpec(strategy=strategy, ratios=THREE_PARTS, seed=42)
    manifest = split_dataset(VERSION, rows, spec)
    data = manifest.to_bytes()
    document = json.loads(data)
    assert data == (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode()
    assert set(document) == {
        "dataset_version",
        "dataset_content_sha256",
        "dataset_artifact_uri",
        "spec",
        "parts",
        "stats",
        "overlap_count",
    }
    assert document["dataset_version"] == VERSION.name
    assert document["dataset_content_sha256"] == VERSION.content_sha256
    assert document["dataset_artifact_uri"] == VERSION.artifact_uri
    assert document["spec"] == {
        "strategy": strategy.value,
        "seed": 42,
        "ratios": {"train": 0.7, "validation": 0.2, "test": 0.1},
    }
    assert document["overlap_count"] == 0
    order = {row.id: index for index, row in enumerate(rows)}
    label_of = {row.id: row.label for row in rows}
    for part in ("train", "validation", "test"):
        ids = document["parts"][part]
        assert ids, f"{part} is empty"
        assert ids == sorted(ids, key=order.__getitem__), "ids keep dataset order"
        assert document["stats"][part] == {
            "rows": len(ids),
            "labels": dict(Counter(label_of[i] for i in ids)),
        }
    all_ids = [i for part in document["parts"].values() for i in part]
    assert sorted(all_ids) == sorted(order)
    assert manifest.group_count == len({row.text_key for row in rows})
    assert sum(s.groups for s in manifest.stats) == manifest.group_count


@pytest.mark.parametrize("strategy", list(SplitStrategy))
def test_same_content_and_spec_give_byte_identical_manifests(strategy) -> None:
    spec = SplitSpec(strategy=strategy, ratios=TWO_PARTS, seed=3)
    first = split_dataset(VERSION, _labelled_rows(200), spec).to_bytes()
    again = split_dataset(VERSION, _labelled_rows(200), spec).to_bytes()
    assert first == again
    other_seed = split_dataset(VERSION, _labelled_rows(200), SplitSpec(strategy=strategy, seed=4))
    assert other_seed.to_bytes() != first


def test_causal_lm_manifest_has_no_labels() -> None:
    rows = [SplitRow(f"r{i}", f"prompt {i}", None) for i in range(50)]
    manifest = split_dataset(VERSION, rows, DEFAULT_SPEC)
    stats = json.loads(manifest.to_bytes())["stats"]
    assert stats["train"]["labels"] == stats["validation"]["labels"] == {}
    assert stats["test"] == {"rows": 0, "labels": {}}


def test_an_overlapping_assignment_fails_loudly(monkeypatch) -> None:
    rows = _labelled_rows(40)
    real_assign = manifest_module.assign_rows

    def leaky_assign(rows_, spec_, **options):
        groups, parts = real_assign(rows_, spec_, **options)
        # a bug: one row of a two-row group goes elsewhere
        twin = next(i for i, row in enumerate(rows_) if groups.sizes()[groups.row_groups[i]] > 1)
        parts[twin] = Part.VALIDATION if parts[twin] is Part.TRAIN else Part.TRAIN
        return groups, parts

    monkeypatch.setattr(manifest_module, "assign_rows", leaky_assign)
    with pytest.raises(SplitIntegrityError, match="1 text"):
        split_dataset(VERSION, rows, DEFAULT_SPEC)


@pytest.mark.parametrize(
    ("rows", "spec", "violation"),
    [
        ([], DEFAULT_SPEC, "TOO_FEW_GROUPS"),
        (
            [SplitRow("a", "same", "x"), SplitRow("b", "same", "y")],
            DEFAULT_SPEC,
            "TOO_FEW_GROUPS",
        ),
        (
            [SplitRow(f"r{i}", f"t{i}", "x") for i in range(2)],
            SplitSpec(ratios=THREE_PARTS, strategy=SplitStrategy.STRATIFIED),
            "TOO_FEW_GROUPS",
        ),
        ([SplitRow("a", "t1", "x"), SplitRow("a", "t2", "x")], DEFAULT_SPEC, "DUPLICATE_ROW_ID"),
    ],
    ids=["empty", "one-group", "two-groups-three-parts", "duplicate-id"],
)
def test_versions_that_cannot_be_split_say_why(rows, spec, violation) -> None:
    with pytest.raises(UnsplittableVersion) as raised:
        split_dataset(VERSION, rows, spec)
    assert [v.type for v in raised.value.violations] == [violation]


def test_hash_refuses_to_leave_a_part_empty() -> None:
    # with 3 groups and HASH some seed puts them all in train; find it, then see the refusal
    rows = [SplitRow(f"r{i}", f"t{i}", "x") for i in range(3)]
    seed = next(
        s
        for s in range(1000)
        if set(_parts_by_row(rows, SplitSpec(seed=s)).values()) == {Part.TRAIN}
    )
    with pytest.raises(UnsplittableVersion) as raised:
        split_dataset(VERSION, rows, SplitSpec(seed=seed))
    assert [v.type for v in raised.value.violations] == ["EMPTY_PART"]
    assert "validation" in raised.value.message
    # STRATIFIED fills every part as long as there are enough groups
    stratified = split_dataset(
        VERSION, rows, SplitSpec(strategy=SplitStrategy.STRATIFIED, seed=seed)
    )
    assert [s.rows for s in stratified.stats] == [2, 1, 0]


def test_group_positions_follow_the_documented_hash() -> None:
    # the hash is part of the contract: changing it would move rows between releases
    key, seed = normalize_input_text("A review"), -5
    material = b"tuneline.splitter.v1/group-position\x00" + seed.to_bytes(8, "big", signed=True)
    expected = int.from_bytes(hashlib.sha256(material + key.encode()).digest()[:8], "big")
    assert group_positions(seed, [key]) == [expected]


_MANIFEST_IN_A_SUBPROCESS = """
import hashlib, sys
from services.splitter.domain import *
from shared.input_text import normalize_input_text
from shared.task_types import TaskType
rows = [SplitRow(f"r{i}", normalize_input_text(f"Text {i % 97}"), "abc"[i % 3]) for i in range(600)]
version = DatasetVersionRef("datasets/d/versions/v", "datasets/d", "0" * 64, "file:///x",
                            TaskType.CLASSIFICATION, 600, 1)
for strategy in SplitStrategy:
    spec = SplitSpec(strategy=strategy, ratios=SplitRatios(0.7, 0.2, 0.1), seed=11)
    print(hashlib.sha256(split_dataset(version, rows, spec).to_bytes()).hexdigest())
"""


def test_manifests_are_byte_identical_across_processes() -> None:
    # str hashing is randomised per process: nothing may depend on set or dict-of-str order
    digests = {
        subprocess.run(
            [sys.executable, "-c", _MANIFEST_IN_A_SUBPROCESS],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2", "3")
    }
    assert len(digests) == 1
    assert len(digests.pop().split()) == 2


def test_a_mixed_group_is_stratified_by_its_majority_label() -> None:
    rows = SplitRows.of(
        [
            SplitRow("1", "g-majority", "b"),
            SplitRow("2", "g-majority", "a"),
            SplitRow("3", "g-majority", "b"),
            SplitRow("4", "g-tie", "b"),
            SplitRow("5", "g-tie", "a"),
            SplitRow("6", "g-pure", "c"),
            SplitRow("7", "g-unlabelled", None),
        ]
    )
    groups = GroupIndex.of(rows)
    assert groups.keys == ["g-majority", "g-tie", "g-pure", "g-unlabelled"]
    assert groups.row_groups == [0, 0, 0, 1, 1, 2, 3]
    assert groups.sizes() == [3, 2, 1, 1]
    assert groups.strata(rows) == ["b", "a", "c", None]
