"""Splitter throughput: rows per second for 1M rows, HASH and STRATIFIED, against a baseline.

    .venv/bin/python bench/split.py [--rows 1000000] [--seed 0]

Rows are generated in memory: review-like texts (lengths drawn around a ~110-character mean,
like the Rotten Tomatoes snippets in DATA.md), three imbalanced labels, ~5 % near-duplicate
texts (case and spacing changed: the same group key) and ~20 % of rows in explicit groups.

Two comparisons, each against a baseline measured in the same run:

* **domain** — from parsed rows: the splitter's work (text keys and explicit groups joined into
  groups, assignment, manifest with stats and overlap check, serialised) versus the bare minimum
  any split needs: computing every row's normalized text key and one sha256 per row.
* **service path** — from the canonical JSONL file: what a split costs in the service (stream
  and verify the file, parse, split, write the manifest atomically) versus reading the file,
  ``json.loads`` of every line, the text key and one sha256 per row. It runs in a fresh
  process, like the service, so its peak RSS is what splitting the version takes.

Prints rows/s per stage (the best of ``--repeat`` runs), the ratio to the baseline (1.0 = as
fast as the baseline) and peak RSS.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.splitter.adapters.artifacts import read_split_rows, write_manifest
from services.splitter.domain import (
    DatasetVersionName,
    DatasetVersionRef,
    SplitRatios,
    SplitRows,
    SplitSpec,
    SplitStrategy,
    split_dataset,
    text_key,
)
from shared.artifacts import LocalArtifactStore
from shared.task_types import TaskType

# one string split once reads better than a hundred-line list
_WORDS = (  # noqa: SIM905
    "the a an film movie story plot acting director cast scene scenes moments ending script "
    "funny dull brilliant tedious charming overlong heartfelt clumsy sharp witty bland bold "
    "performance performances camera score visual visuals pacing dialogue characters "
    "audience never always rarely often quite very too not but and yet with without about "
    "into surprisingly thoroughly utterly mostly entertaining forgettable memorable "
    "ambitious "
).split()
_LABELS = ("positive", "negative", "neutral")
_LABEL_WEIGHTS = (0.55, 0.35, 0.10)


def generate_rows(count: int, seed: int) -> list[dict[str, str]]:
    """``count`` classification rows in canonical shape (with ``id``)."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for index in range(count):
        if index and rng.random() < 0.05:
            # a near-duplicate of an earlier text: the normalised group key must catch it
            earlier = rows[rng.randrange(len(rows))]
            text = "  " + earlier["text"].upper() + " "
        else:
            length = max(20, int(rng.gauss(110, 45)))
            words: list[str] = []
            size = 0
            while size < length:
                word = rng.choice(_WORDS)
                words.append(word)
                size += len(word) + 1
            text = " ".join(words).capitalize() + "."
        row = {
            "id": f"r-{index:016x}",
            "text": text,
            "label": rng.choices(_LABELS, _LABEL_WEIGHTS)[0],
        }
        if rng.random() < 0.2:
            row["group"] = f"source-{rng.randrange(count // 10 + 1)}"
        rows.append(row)
    return rows


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB.

    Linux's ``VmHWM`` belongs to the process image alone; ``ru_maxrss`` of a spawned child
    starts from its forking parent's peak, so it is only the fallback.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_rates(rows: int, stages: dict[str, Callable[[], object]], repeat: int) -> list[float]:
    """Rows/s of each stage: the best of ``repeat`` rounds.

    Rounds interleave the stages (baseline, HASH, STRATIFIED, baseline, …), so a neighbour's
    burst of load on a shared machine hits a baseline and the splitter alike.
    """
    best = dict.fromkeys(stages, float("inf"))
    for _ in range(repeat):
        for label, work in stages.items():
            started = time.perf_counter()
            work()
            best[label] = min(best[label], time.perf_counter() - started)
    for label, seconds in best.items():
        print(f"  {label:<46} {seconds:7.2f} s  {rows / seconds:>12,.0f} rows/s", flush=True)
    return [rows / seconds for seconds in best.values()]


def write_canonical(rows: list[dict[str, str]], data_dir: Path) -> DatasetVersionRef:
    """Store ``rows`` as the dataset service would: canonical JSONL under its artifacts."""
    content_path = data_dir / "dataset" / "artifacts" / "bench" / "rows.jsonl"
    content_path.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    with content_path.open("wb") as handle:
        for row in rows:
            line = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            data = (line + "\n").encode()
            digest.update(data)
            handle.write(data)
    return DatasetVersionRef(
        name="datasets/bench/versions/v1",
        dataset="datasets/bench",
        content_sha256=digest.hexdigest(),
        artifact_uri=content_path.as_uri(),
        task_type=TaskType.CLASSIFICATION,
        row_count=len(rows),
        byte_count=content_path.stat().st_size,
    )


def bench_domain(
    rows: list[dict[str, str]], version: DatasetVersionRef, specs: list[SplitSpec], repeat: int
) -> tuple[float, dict[SplitStrategy, float]]:
    """Baseline and per-strategy rows/s from parsed rows."""
    task = version.task_type

    def baseline() -> None:
        sha256 = hashlib.sha256
        for row in rows:
            sha256(text_key(row, task).encode()).digest()

    def split(spec: SplitSpec) -> None:
        split_rows = SplitRows()
        for number, row in enumerate(rows, start=1):
            split_rows.add(row, task, dataset_version=version.name, line=number)
        split_dataset(version, split_rows, spec).to_bytes()

    stages: dict[str, Callable[[], object]] = {"baseline: text key + one sha256 per row": baseline}
    for spec in specs:
        stages[f"{spec.strategy.value}: keys, assign, manifest bytes"] = partial(split, spec)
    base_rate, *rates = best_rates(len(rows), stages, repeat)
    return base_rate, {spec.strategy: rate for spec, rate in zip(specs, rates, strict=True)}


def bench_service_path(
    data_dir: Path, version: DatasetVersionRef, specs: list[SplitSpec], repeat: int
) -> tuple[float, dict[SplitStrategy, float], float]:
    """Baseline and per-strategy rows/s from the canonical file to the manifest artifact, and
    the peak RSS (MB) of the process doing it. Runs in a fresh process (see ``main``)."""
    store = LocalArtifactStore(data_dir / "splitter" / "artifacts", readable_roots=[data_dir])
    content_path = store.local_path(version.artifact_uri)
    version_name = DatasetVersionName.parse(version.name, field="bench")

    def baseline() -> None:
        sha256 = hashlib.sha256
        with content_path.open("rb") as handle:
            for line in handle:
                sha256(text_key(json.loads(line), version.task_type).encode()).digest()

    def split(spec: SplitSpec) -> None:
        manifest = split_dataset(version, read_split_rows(store, version), spec)
        write_manifest(store, version_name, f"s-{spec.strategy.value.lower()}", manifest)

    stages: dict[str, Callable[[], object]] = {"baseline: read, json.loads, key + sha256": baseline}
    for spec in specs:
        stages[f"{spec.strategy.value}: verify, parse, split, write"] = partial(split, spec)
    base_rate, *rates = best_rates(version.row_count, stages, repeat)
    by_strategy = {spec.strategy: rate for spec, rate in zip(specs, rates, strict=True)}
    return base_rate, by_strategy, peak_rss_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best counts")
    args = parser.parse_args()

    print(f"generating {args.rows:,} rows ...", flush=True)
    rows = generate_rows(args.rows, args.seed)
    # The generated rows stand in for input that, in the service, is never all in memory at
    # once: keep the garbage collector from walking their millions of objects during timing.
    gc.freeze()
    mean_length = sum(len(r["text"]) for r in rows) / len(rows)
    print(f"  mean text length {mean_length:.0f} characters")
    ratios = SplitRatios(0.8, 0.1, 0.1)
    specs = [SplitSpec(strategy=s, ratios=ratios, seed=args.seed) for s in SplitStrategy]

    with tempfile.TemporaryDirectory(prefix="tuneline-bench-split-") as scratch:
        data_dir = Path(scratch)
        version = write_canonical(rows, data_dir)
        print(f"  canonical JSONL {version.byte_count / 1e6:.0f} MB")
        print("\ndomain (rows already parsed)")
        domain_base, domain_rates = bench_domain(rows, version, specs, args.repeat)
        print("\nservice path (canonical JSONL file -> manifest artifact)", flush=True)
        # a fresh process, as the service is: no generated rows in its heap or its peak RSS
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as child:
            file_base, service_rates, service_peak_mb = child.submit(
                bench_service_path, data_dir, version, specs, args.repeat
            ).result()

    peak_mb = peak_rss_mb()
    print("\nratios (splitter rows/s / baseline rows/s; 1.0 = as fast as the baseline)")
    for strategy in SplitStrategy:
        print(
            f"  {strategy.value:<11} domain {domain_rates[strategy] / domain_base:5.2f}   "
            f"service path {service_rates[strategy] / file_base:5.2f}"
        )
    print(f"peak RSS, service path process: {service_peak_mb:,.0f} MB")
    print(
        f"peak RSS, domain process: {peak_mb:,.0f} MB (includes the {len(rows):,} generated rows)"
    )


if __name__ == "__main__":
    main()
