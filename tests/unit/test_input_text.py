"""``shared.input_text``: the normalized input text every service agrees on."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.input_text import normalize_input_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello World", "hello world"),
        ("  hello \t\n  world  ", "hello world"),
        ("hello\u00a0\u2003world", "hello world"),  # no-break and em spaces are whitespace too
        ("\ufb01ne", "fine"),  # NFKC unfolds the ligature
        ("\uff28\uff45\uff4c\uff4c\uff4f", "hello"),  # NFKC maps full-width letters
        ("STRASSE", "strasse"),
        ("Stra\u00dfe", "strasse"),  # casefold, not lower()
        ("a\x1fb", "a b"),  # an ASCII separator control is whitespace to str.split
        ("", ""),
    ],
)
def test_normalize_input_text(text: str, expected: str) -> None:
    assert normalize_input_text(text) == expected


def _reference(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
def test_the_ascii_fast_path_agrees_with_the_definition(text: str) -> None:
    assert normalize_input_text(text) == _reference(text)


@given(st.text())
def test_any_text_follows_the_definition(text: str) -> None:
    assert normalize_input_text(text) == _reference(text)
