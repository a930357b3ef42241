"""Local file paths out of the messages API clients read.

A failed job's or evaluation's message often quotes text from code the platform does not
control — PyTorch, transformers, the operating system — and that text names local files
(``No such file or directory: '/var/lib/tuneline/trainer/artifacts/…'``). Where the server keeps
its files is none of a client's business, and a message should name resources, not places.
The platform's own messages say what a file is (an artifact's key, a model's name); every
failure message stored for clients also passes through :func:`without_local_paths`, so quoted
text cannot leak a path either.
"""

from __future__ import annotations

import re

# A file:// URI, or an absolute path of two or more components not glued to what comes before
# it (so `datasets/d/versions/v`, `tokens/s`, `0.8/0.2` and `http://host/path` stay as they
# are). Components stop at whitespace, quotes, brackets and the punctuation ending a path.
_COMPONENT = r"/[^\s/'\"`()<>\[\]{},;:]+"
_LOCAL_PATH = re.compile(rf"file://(?:{_COMPONENT})+/?|(?<![\w.~/:-])(?:{_COMPONENT}){{2,}}/?")


def without_local_paths(text: str) -> str:
    """``text`` with every absolute local path cut to its last component: ``…/name``."""
    return _LOCAL_PATH.sub(lambda match: "…/" + match.group(0).rstrip("/").rsplit("/", 1)[-1], text)
