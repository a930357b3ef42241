"""A compact, streaming "have I seen this before?" index of 64-bit fingerprints.

Cross-row validation (exact duplicates, id uniqueness, the same input with conflicting labels)
needs memory of every earlier row. Keeping the rows — or even Python ints in a ``set`` (about
70 bytes each) — would make memory grow far faster than the upload. This index keeps each
fingerprint as 8 bytes plus a 4-byte value in sorted numpy runs, so memory is
**12 bytes per distinct key**, plus a merge buffer bounded by :data:`MAX_RUN_KEYS`.

Keys arrive in batches (one per block of rows) and are answered in batch order, as if they had
been checked one by one: a key repeated inside a batch counts as seen from its second
occurrence on. New keys of a batch become a sorted run; runs of similar size merge (like a
binary counter) until a run reaches :data:`MAX_RUN_KEYS`, after which it is left alone, so a
merge never copies more than ``2 * MAX_RUN_KEYS`` entries.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Largest run produced by merging (2**20 keys = 12 MiB with values).
MAX_RUN_KEYS = 1 << 20

#: Bytes one distinct key occupies: a uint64 key and a uint32 value.
BYTES_PER_KEY = 12

Keys = npt.NDArray[np.uint64]
Values = npt.NDArray[np.uint32]
Flags = npt.NDArray[np.bool_]


class FingerprintIndex:
    """Distinct uint64 keys, each with the uint32 value it had when first observed."""

    def __init__(self, *, max_run_keys: int = MAX_RUN_KEYS) -> None:
        self._keys: list[Keys] = []
        self._values: list[Values] = []
        self._max_run = max_run_keys
        self.size = 0

    @property
    def run_count(self) -> int:
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self._keys, self._values, strict=True))

    def observe(self, keys: Keys, values: Values) -> tuple[Flags, Values]:
        """Record a batch of ``(key, value)`` pairs in order.

        Returns, per position: whether the key was seen before (earlier in the index or
        earlier in this batch), and the value stored with the key's first occurrence (its own
        value when it is new).
        """
        if len(keys) == 0:
            return np.zeros(0, dtype=np.bool_), np.zeros(0, dtype=np.uint32)
        unique, first_at, inverse = np.unique(keys, return_index=True, return_inverse=True)
        first_values = values[first_at]
        known = np.zeros(len(unique), dtype=np.bool_)
        for run_keys, run_values in zip(self._keys, self._values, strict=True):
            at = np.searchsorted(run_keys, unique)
            np.minimum(at, len(run_keys) - 1, out=at)
            hit = run_keys[at] == unique
            first_values[hit] = run_values[at[hit]]
            known |= hit
        # a later occurrence inside the batch has been "seen" by its first occurrence
        seen = known[inverse] | (np.arange(len(keys)) != first_at[inverse])
        new = ~known
        self._add_run(unique[new], values[first_at[new]])
        return seen, first_values[inverse]

    def _add_run(self, keys: Keys, values: Values) -> None:
        if len(keys) == 0:
            return
        self._keys.append(keys)
        self._values.append(values)
        self.size += len(keys)
        while (
            len(self._keys) >= 2
            and len(self._keys[-2]) < 2 * len(self._keys[-1])
            and len(self._keys[-2]) + len(self._keys[-1]) <= self._max_run
        ):
            newer_keys, newer_values = self._keys.pop(), self._values.pop()
            older_keys, older_values = self._keys.pop(), self._values.pop()
            merged_keys, merged_values = _merge(older_keys, older_values, newer_keys, newer_values)
            self._keys.append(merged_keys)
            self._values.append(merged_values)


def _merge(a_keys: Keys, a_values: Values, b_keys: Keys, b_values: Values) -> tuple[Keys, Values]:
    """Merge two sorted, disjoint runs in linear time (no argsort: no 8-byte index array)."""
    total = len(a_keys) + len(b_keys)
    b_at = np.searchsorted(a_keys, b_keys) + np.arange(len(b_keys))
    from_b = np.zeros(total, dtype=np.bool_)
    from_b[b_at] = True
    keys = np.empty(total, dtype=np.uint64)
    values = np.empty(total, dtype=np.uint32)
    keys[b_at] = b_keys
    values[b_at] = b_values
    from_a = ~from_b
    keys[from_a] = a_keys
    values[from_a] = a_values
    return keys, values
