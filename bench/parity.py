"""Merged versus unmerged parity of LoRA and DoRA adapters, and the serving service's speed.

For LoRA and DoRA adapters on the packaged encoder (all-MiniLM-L6-v2, classification, trained
for a few steps on Rotten Tomatoes snippets) and on SmolLM2-135M-Instruct (causal LM, adapter
B matrices set to seeded noise so the adapter changes the outputs; chatterbot questions), the
evaluator's own parity measurement (``services.evaluator.adapters.parity.measure_parity``,
what every evaluation runs) on ``--examples`` rows:

* fp32: max |logit difference| between the merged and the unmerged model (goal <= 1e-4) —
  every class logit, or every next-token logit at the completion positions;
* bf16: agreement of predicted labels (goal >= 99.5 %) or of greedy next tokens at every
  completion position, teacher-forced (goal >= 99 %).

Then the serving figures of issue #18: ``bench/serving_throughput.py``'s
:func:`measure_serving_throughput` on the encoder's LoRA adapter — Predict through the serving
core and gRPC against a bare forward loop (goal >= 0.8x) and p99 latency at batch 1.

    .venv/bin/python bench/parity.py [--examples 64] [--device cpu] [--small] [--no-serving]

``--small`` uses SmolLM2 cut to 4 layers (seconds instead of a minute on a CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.evaluator.adapters.parity import measure_parity
from services.evaluator.domain.parity import ParityGoals
from shared.modeling import default_models_root
from shared.modeling.loading import resolve_device
from shared.modeling.packaged import ENCODER, SMOLLM2, SMOLLM2_4_LAYERS, prepare_packaged_models
from tests.fixtures.adapters import save_causal_lm_adapter, train_classification_adapter
from tests.fixtures.trainer_data import chatterbot_rows, rotten_tomatoes_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if any)")
    parser.add_argument("--small", action="store_true", help="SmolLM2 cut to 4 layers")
    parser.add_argument("--no-serving", action="store_true", help="skip the serving figures")
    parser.add_argument("--train-steps", type=int, default=30)
    args = parser.parse_args()
    device = resolve_device(args.device)
    models_root = default_models_root()
    causal = SMOLLM2_4_LAYERS if args.small else SMOLLM2
    prepare_packaged_models(models_root, names=(ENCODER, causal))
    goals = ParityGoals()
    reviews = rotten_tomatoes_rows(400, seed=7)
    train, held_out = reviews[:300], reviews[300:]
    questions = chatterbot_rows(args.examples, seed=7)
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as folder:
        lora_encoder = None
        for method in ("lora", "dora"):
            dora = method == "dora"
            adapters = {
                ENCODER: train_classification_adapter(
                    models_root=models_root,
                    base_model_name=ENCODER,
                    rows=train,
                    labels=("fresh", "rotten"),
                    out=Path(folder) / f"encoder-{method}",
                    steps=args.train_steps,
                    use_dora=dora,
                ),
                causal: save_causal_lm_adapter(
                    models_root=models_root,
                    base_model_name=causal,
                    out=Path(folder) / f"causal-{method}",
                    rank=8,
                    max_length=96,
                    perturb=0.02,
                    use_dora=dora,
                ),
            }
            if not dora:
                lora_encoder = adapters[ENCODER]
            for model, adapter in adapters.items():
                rows = held_out if model == ENCODER else questions
                started = time.perf_counter()
                measured = measure_parity(
                    adapter,
                    rows,
                    models_root=models_root,
                    device=device,
                    max_examples=args.examples,
                )
                numbers = measured.measurement
                assert numbers is not None, measured.skipped_reason
                causal_lm = model != ENCODER
                minimum = goals.bf16_min_agreement(causal_lm=causal_lm)
                results.append(
                    {
                        "model": model,
                        "method": method,
                        "examples": numbers.example_count,
                        "fp32_max_abs_logit_delta": float(
                            f"{numbers.fp32_max_abs_logit_delta:.3g}"
                        ),
                        "fp32_goal_met": numbers.fp32_max_abs_logit_delta <= goals.fp32_tolerance,
                        "bf16_agreement": round(numbers.bf16_agreement, 4),
                        "bf16_unit": "greedy tokens" if causal_lm else "labels",
                        "bf16_compared": numbers.bf16_compared_count,
                        "bf16_goal_met": numbers.bf16_agreement >= minimum,
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
                print(json.dumps(results[-1]), flush=True)
        print(f"\ndevice: {device}")
        print(f"{'model':<28}{'method':<7}{'fp32 max|Δ|':>13}  {'bf16 agreement':>24}")
        for row in results:
            fp32 = f"{row['fp32_max_abs_logit_delta']:.2e}{'' if row['fp32_goal_met'] else '!'}"
            bf16 = (
                f"{float(str(row['bf16_agreement'])):.2%} of {row['bf16_compared']} "
                f"{'' if row['bf16_goal_met'] else '!'}"
            )
            print(f"{row['model']:<28}{row['method']:<7}{fp32:>13}  {bf16:>24}")
        print("('!': misses the goal: fp32 <= 1e-4; bf16 >= 99.5 % labels, >= 99 % tokens)")
        if args.no_serving or lora_encoder is None:
            return
        # the serving half of the issue's bench: H1's measurement, on the same LoRA adapter
        from bench.serving_throughput import measure_serving_throughput  # noqa: PLC0415

        serving = measure_serving_throughput(
            lora_encoder,
            [row["text"] for row in held_out],
            models_root=models_root,
            device=args.device,
        )
        print("\nserving (Predict, batch 1):", json.dumps(asdict(serving)))
        verdict = "meets" if min(serving.core_ratio, serving.grpc_ratio) >= 0.8 else "MISSES"
        print(
            f"serving/bare: core {serving.core_ratio}x, gRPC {serving.grpc_ratio}x ({verdict} "
            f"0.8x); gRPC p99 {serving.grpc_p99_ms} ms"
        )


if __name__ == "__main__":
    main()
