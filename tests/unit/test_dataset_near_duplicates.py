"""Near-duplicate inputs: real reviews and paraphrase-like edits of them (a few words changed).

The shared MinHash/LSH grouping finds every edited review's pair and nothing between unrelated
reviews; the dataset gate reports the groups as a warning naming their lines, and skips the
check (saying so) past its row limit.
"""

from __future__ import annotations

import multiprocessing
import random
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
from datasketch import MinHash
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dataset.domain.policy import SchemaPolicy
from services.dataset.domain.reports import SourceKind
from services.dataset.domain.rules import Rule, Severity
from services.dataset.handlers.datasets import create_dataset
from services.dataset.handlers.deps import DatasetDeps
from services.dataset.handlers.ingest import IngestRequest, IngestResult, upload_version
from shared.input_text import normalize_input_text
from shared.near_duplicates import (
    NUM_PERM,
    near_duplicate_groups,
    near_duplicates_in,
    shingles,
    signature_matrix,
)
from shared.task_types import TaskType
from tests.fixtures.datasets import make_dataset_deps, rotten_tomatoes_rows, to_jsonl

SUBSTITUTES = ("truly", "rather", "picture", "story", "somewhat", "utterly")


def long_distinct_reviews(count: int, *, min_words: int = 15) -> list[dict[str, str]]:
    """Real reviews of at least ``min_words`` words, distinct once normalized."""
    seen: set[str] = set()
    rows = []
    for row in rotten_tomatoes_rows():
        key = normalize_input_text(row["text"])
        if len(key.split()) >= min_words and key not in seen:
            seen.add(key)
            rows.append(row)
            if len(rows) == count:
                return rows
    raise AssertionError("not enough long reviews")


def paraphrase(text: str, rng: random.Random, words: int = 2) -> str:
    """``text`` with ``words`` of its words replaced by others: a near-duplicate, not a repeat."""
    tokens = text.split()
    for position in rng.sample(range(len(tokens)), words):
        tokens[position] = rng.choice([w for w in SUBSTITUTES if w != tokens[position]])
    return " ".join(tokens)


REVIEWS = long_distinct_reviews(400)


def test_paraphrases_of_real_reviews_join_their_originals_and_nothing_else() -> None:
    rng = random.Random(5)
    originals = [normalize_input_text(row["text"]) for row in REVIEWS]
    edited = [normalize_input_text(paraphrase(row["text"], rng)) for row in REVIEWS[:100]]
    groups = near_duplicate_groups(originals + edited)
    pairs = {tuple(group) for group in groups}
    found = {(i, 400 + i) for i in range(100)} & pairs
    assert len(found) >= 95  # two of ~20 words changed: a MinHash estimate may miss a few
    assert all(len(group) == 2 and group[1] - group[0] == 400 for group in groups)
    assert near_duplicate_groups(originals) == []  # distinct real reviews stay apart
    assert near_duplicate_groups(originals + edited) == groups  # deterministic


def test_worker_processes_compute_the_same_groups() -> None:
    """Past one task's worth of texts, the signatures are computed in chunks across the
    validation workers' processes: the groups must be the calling thread's."""
    rng = random.Random(8)
    originals = [normalize_input_text(row["text"]) for row in long_distinct_reviews(2500)]
    edited = [normalize_input_text(paraphrase(text, rng)) for text in originals[:300]]
    texts = originals + edited
    assert len(texts) > 2048  # more than one chunk of 2048
    in_thread = near_duplicate_groups(texts)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        with mock.patch.object(pool, "map", wraps=pool.map) as shared_out:
            assert near_duplicate_groups(texts, executor=pool) == in_thread
        shared_out.assert_called_once()
    assert len(in_thread) >= 280


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[DatasetDeps]:
    deps = make_dataset_deps(tmp_path)
    yield deps
    deps.sessions.kw["bind"].dispose()


def upload(deps: DatasetDeps, rows: list[dict[str, str]]) -> IngestResult:
    return upload_version(
        deps,
        IngestRequest(dataset="datasets/reviews", source_kind=SourceKind.UPLOAD),
        iter([to_jsonl(rows)]),
    )


def test_the_gate_warns_naming_the_lines_of_each_group(deps: DatasetDeps) -> None:
    with deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="reviews",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(),
        )
    rng = random.Random(9)
    rows = [dict(row) for row in REVIEWS[:200]]
    # lines 201-203 paraphrase lines 1, 2 and 3; line 204 repeats line 201 up to case
    rows += [{**rows[i], "text": paraphrase(rows[i]["text"], rng, words=1)} for i in range(3)]
    rows.append({**rows[200], "text": rows[200]["text"].upper()})

    result = upload(deps, rows)

    assert result.version is not None
    (finding,) = [f for f in result.report.findings if f.rule is Rule.NEAR_DUPLICATES]
    assert finding.severity is Severity.WARNING
    assert finding.count == 7
    assert finding.line_numbers == (1, 2, 3, 201, 202, 203, 204)
    assert "3 group(s)" in finding.message
    assert "lines 1, 201, 204; lines 2, 202; lines 3, 203" in finding.message


def test_past_the_row_limit_the_check_says_it_was_skipped(tmp_path: Path) -> None:
    deps = make_dataset_deps(tmp_path)
    deps = replace(deps, limits=replace(deps.limits, near_duplicate_max_rows=50))
    with deps.sessions.begin() as session:
        create_dataset(
            session,
            deps,
            dataset_id="reviews",
            task_type=TaskType.CLASSIFICATION,
            policy=SchemaPolicy(),
        )
    rows = [*REVIEWS[:60], {**REVIEWS[0], "text": REVIEWS[0]["text"] + " indeed"}]
    result = upload(deps, rows)
    rules = {f.rule: f.severity for f in result.report.findings}
    assert rules[Rule.NEAR_DUPLICATE_CHECK_SKIPPED] is Severity.INFO
    assert Rule.NEAR_DUPLICATES not in rules
    deps.sessions.kw["bind"].dispose()


def test_contamination_names_the_evaluation_rows_with_near_duplicates_in_training() -> None:
    rng = random.Random(13)
    train = [normalize_input_text(row["text"]) for row in REVIEWS[:300]]
    clean = [normalize_input_text(row["text"]) for row in REVIEWS[300:]]
    leaked = [normalize_input_text(paraphrase(row["text"], rng)) for row in REVIEWS[:20]]
    copied = [text.upper() for text in train[20:25]]  # equal once normalized
    evaluation = clean + leaked + [normalize_input_text(text) for text in copied]

    found = near_duplicates_in(evaluation, train)

    assert set(found) <= set(range(100, 125))  # no clean evaluation row is flagged
    assert len(found) >= 23  # every copy, and (a MinHash estimate) nearly every paraphrase
    for query, matches in found.items():
        assert matches == [query - 100]  # each names the training row it came from
    assert near_duplicates_in(clean, train) == {}


def test_causal_lm_rows_are_compared_on_prompt_and_completion(deps: DatasetDeps) -> None:
    """A chat dataset teaching one long answer under two unrelated short prompts: the prompts
    alone are not near-duplicates, prompt and completion together are."""
    with deps.sessions.begin() as session:
        create_dataset(
            session, deps, dataset_id="reviews", task_type=TaskType.CAUSAL_LM, policy=SchemaPolicy()
        )
    rows: list[dict[str, str]] = [
        {"prompt": f"Summarise review {i}.", "completion": row["text"]}
        for i, row in enumerate(REVIEWS[:30])
    ]
    # lines 31 and 32 teach the answers of lines 1 and 2 under other prompts
    rows += [
        {"prompt": "What did the critic think?", "completion": REVIEWS[0]["text"]},
        {"prompt": "Give me the gist, please!", "completion": REVIEWS[1]["text"]},
    ]

    result = upload(deps, rows)

    assert result.version is not None
    (finding,) = [f for f in result.report.findings if f.rule is Rule.NEAR_DUPLICATES]
    assert finding.severity is Severity.WARNING
    assert finding.line_numbers == (1, 2, 31, 32)
    assert "near-duplicate prompts and completions" in finding.message
    assert "lines 1, 31; lines 2, 32" in finding.message


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(
        st.text(st.sampled_from("ab \u00e9\u2019\U0001f3ac"), max_size=40), min_size=1, max_size=40
    )
)
def test_signatures_are_datasketchs_over_each_texts_shingles(texts: list[str]) -> None:
    """The signatures come from every shingle's CRC-32 computed for a batch at once (empty,
    short and multi-byte texts, batches that straddle texts included): they must be what
    datasketch's MinHash gives for the same shingles, one text at a time."""
    for text, hash_values in zip(texts, signature_matrix(texts), strict=True):
        reference = MinHash(num_perm=NUM_PERM, seed=1, hashfunc=zlib.crc32)
        reference.update_batch(sorted(shingles(text)))
        assert (hash_values == reference.hashvalues).all(), text
