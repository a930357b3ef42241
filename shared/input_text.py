"""The normalized form of an input text, as every service agrees on it (COMMON.md, "Group key").

Two inputs that differ only in Unicode form, case or whitespace are the same input: the dataset
service uses this to spot one input with conflicting labels, the splitter to keep such
near-duplicates in one part (its leakage guard). One definition, so both always agree.
"""

from __future__ import annotations

import unicodedata


def normalize_input_text(text: str) -> str:
    """NFKC, case-folded, whitespace runs collapsed to one space, stripped.

    ASCII text takes a fast path with the same result: it is NFKC already, ``casefold`` is
    ``lower`` for it, and only non-printable characters (tab, line ends …), a double space or
    an edge space need the whitespace pass.
    """
    if text.isascii():
        lowered = text.lower()
        if (
            lowered.isprintable()
            and "  " not in lowered
            and not lowered.startswith(" ")
            and not lowered.endswith(" ")
        ):
            return lowered
        return " ".join(lowered.split())
    # str.split() with no argument splits on runs of any Unicode whitespace and drops the ends
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())
