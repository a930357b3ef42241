"""The normalized form of an input text, as every service agrees on it (COMMON.md, "Group key").

Two inputs that differ only in Unicode form, case or whitespace are the same input: the dataset
service uses this to spot one input with conflicting labels, the splitter to keep such
near-duplicates in one part (its leakage guard). One definition, so both always agree.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping


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


def row_text(row: Mapping[str, object]) -> str | None:
    """The text a row teaches, as written; ``None`` when the row has none of the fields below.

    A classification row's ``text``. A causal-LM row's prompt *and* completion, joined by a
    newline — for chat ``messages``, every message's content.
    """
    text = row.get("text")
    if isinstance(text, str):
        return text
    messages = row.get("messages")
    if isinstance(messages, list):
        contents = [
            message["content"]
            for message in messages
            if isinstance(message, Mapping) and isinstance(message.get("content"), str)
        ]
        return "\n".join(contents) if contents else None
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, str):
        answer = completion if isinstance(completion, str) else ""
        return f"{prompt}\n{answer}"
    return None


def near_duplicate_text(row: Mapping[str, object]) -> str | None:
    """The normalized text on which a row's near-duplicates are judged (:func:`row_text`,
    normalized), ``None`` when the row has none.

    For a causal-LM row that is its prompt *and* completion: two rows that teach the same
    answer to a reworded question are the same lesson, whereas their prompts alone may be too
    short to compare ("Summarise:") or may differ in wording only. The dataset gate, the
    splitter and the evaluator's contamination check all use this one definition.
    """
    text = row_text(row)
    return normalize_input_text(text) if text is not None else None
