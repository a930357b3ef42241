"""FingerprintIndex: answers exactly like a dict of first values, in 12 bytes per key."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dataset.domain.fingerprints import BYTES_PER_KEY, FingerprintIndex

_batches = st.lists(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2**32 - 1)), max_size=30), max_size=12
)


@settings(max_examples=200, deadline=None)
@given(batches=_batches, max_run=st.integers(1, 64))
def test_answers_like_a_dict_of_first_occurrences(
    batches: list[list[tuple[int, int]]], max_run: int
) -> None:
    index = FingerprintIndex(max_run_keys=max_run)
    reference: dict[int, int] = {}
    for batch in batches:
        keys = np.array([k * 0x9E3779B97F4A7C15 % 2**64 for k, _ in batch], dtype=np.uint64)
        values = np.array([v for _, v in batch], dtype=np.uint32)
        seen, first = index.observe(keys, values)
        for i, key in enumerate(keys.tolist()):
            assert seen[i] == (key in reference)
            reference.setdefault(key, int(values[i]))
            assert first[i] == reference[key]
    assert index.size == len(reference)
    assert index.nbytes == BYTES_PER_KEY * len(reference)


def test_runs_merge_like_a_binary_counter_and_stop_at_the_cap() -> None:
    index = FingerprintIndex(max_run_keys=1000)
    rng = np.random.default_rng(7)
    for _ in range(100):
        keys = rng.integers(0, 2**63, size=100, dtype=np.uint64)
        index.observe(keys, np.zeros(100, dtype=np.uint32))
    assert index.size == 10_000
    runs = [len(k) for k in index._keys]
    assert max(runs) <= 1000
    assert runs == sorted(runs, reverse=True)  # older runs are bigger
    assert index.run_count <= 10_000 // 500 + 10


def test_large_keys_and_empty_batches() -> None:
    index = FingerprintIndex()
    top = np.array([2**64 - 1, 0], dtype=np.uint64)
    assert index.observe(top, np.array([1, 2], dtype=np.uint32))[0].tolist() == [False, False]
    seen, first = index.observe(top[::-1], np.array([9, 9], dtype=np.uint32))
    assert (seen.tolist(), first.tolist()) == ([True, True], [2, 1])
    empty = np.zeros(0, dtype=np.uint64)
    assert len(index.observe(empty, np.zeros(0, dtype=np.uint32))[0]) == 0
