"""Which characters a row's strings may hold, and which of them a reader can see.

Three questions the per-row rules (:mod:`services.dataset.domain.rows`) ask of decoded JSON strings:

* **Is it Unicode text at all?** JSON may escape a lone surrogate (``"\\ud800"``); decoded, it
  is a code point that no UTF-8 encoder accepts (``invalid_unicode``).
* **Does it hold a control character?** C0 controls other than tab, line feed and carriage
  return, DEL, and C1 controls other than U+0085 NEXT LINE are not text
  (``control_character``). U+0085, like U+2028 and U+2029, does occur in real text (tweets,
  text converted from EBCDIC) and is kept: the canonical JSONL reader splits lines on the byte
  ``0x0A`` only, so none of them can cut a row.
* **Is there anything to see?** Whitespace, format characters (Unicode category Cf: U+200B
  ZERO WIDTH SPACE, U+2060 WORD JOINER, U+FEFF …), controls and the other default-ignorable
  characters (variation selectors, Hangul fillers …) render as nothing; a text made only of
  them is empty (``empty_text``).
"""

from __future__ import annotations

import re
import unicodedata

#: Lone surrogates: what a ``\\ud800``-``\\udfff`` escape without its pair decodes to.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: A JSON escape of a surrogate, paired or not: lines without one need no further look.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
#: The control characters that are not text (see the module docstring).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")
#: ASCII characters nobody sees: whitespace, C0 controls, DEL.
_ASCII_INVISIBLE = "".join(chr(c) for c in (*range(0x21), 0x7F))
#: Categories of invisible characters: format, control, space and line/paragraph separators.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Zs", "Zl", "Zp"})
#: Default-ignorable code points (Unicode's DerivedCoreProperties) outside those categories,
#: and U+2800 BRAILLE PATTERN BLANK, which renders as a blank.
_INVISIBLE_OTHERS = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0"
    + "".join(chr(c) for c in range(0xFE00, 0xFE10))
)
#: Tag characters and variation selectors supplement, default-ignorable whatever their category.
_INVISIBLE_PLANE_14 = range(0xE0000, 0xE1000)


def has_lone_surrogate(line: str, value: object) -> bool:
    """Whether ``value``, decoded from the JSON ``line``, holds a lone surrogate in any string
    (keys included, at any depth). Cheap for the lines that escape no surrogate at all."""
    if "\\u" not in line or _SURROGATE_ESCAPE.search(line) is None:
        return False
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if _SURROGATE.search(item):
                return True
        elif type(item) is dict:
            stack.extend(item)
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False


def first_control_character(text: str) -> int:
    """The index of the first control character of ``text`` that is not text, or -1."""
    found = _CONTROL.search(text)
    return -1 if found is None else found.start()


def describe_control_character(name: str, text: str, index: int) -> str:
    return (
        f"{name!r} holds the control character U+{ord(text[index]):04X} at character "
        f"{index + 1}; control characters other than tab, line feed, carriage return and "
        "U+0085 are not text"
    )


def _invisible(char: str) -> bool:
    return (
        unicodedata.category(char) in _INVISIBLE_CATEGORIES
        or char in _INVISIBLE_OTHERS
        or ord(char) in _INVISIBLE_PLANE_14
    )


def is_blank(text: str) -> bool:
    """Whether ``text`` shows nothing: empty, or only whitespace and invisible characters.

    Stops at the first visible character, so it costs next to nothing for real text.
    """
    if text.isascii():
        return not text.strip(_ASCII_INVISIBLE)
    return all(_invisible(char) for char in text)
