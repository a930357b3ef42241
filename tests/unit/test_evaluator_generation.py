"""Greedy generation for exact match stops where a chat model's turn ends, with the real
SmolLM2-135M-Instruct tokenizer and weights (prepared once per machine, see DATA.md).

SmolLM2 closes an assistant turn with ``<|im_end|>``. The test gives its tokenizer
``<|endoftext|>`` as EOS and no generation config — as many chat models ship — so only the chat
template says where a turn ends: generation must stop there, not run on into the next turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from services.evaluator.adapters.engine import LoadedSubject, score_causal_lm, stop_token_ids
from services.evaluator.adapters.scoring import ScoringJob
from services.evaluator.domain.evaluation import ScoringSettings
from shared.modeling import default_models_root, resolve_base_model
from shared.modeling.loading import load_base_model, load_tokenizer
from shared.modeling.packaged import SMOLLM2, prepare_packaged_models
from shared.task_types import TaskType

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


@pytest.fixture(scope="module")
def smollm2() -> Iterator[tuple[Any, Any]]:
    root = default_models_root()
    prepare_packaged_models(root, names=(SMOLLM2,))  # a no-op once prepared
    resolved = resolve_base_model(model_name=SMOLLM2, models_root=root)
    tokenizer = load_tokenizer(resolved.path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared two-core machine: a second thread mostly waits
    model = load_base_model(
        resolved, "causal_lm", pad_token_id=tokenizer.pad_token_id, device="cpu"
    )
    model.eval()
    yield tokenizer, model
    torch.set_num_threads(threads)


def test_exact_match_generation_stops_at_im_end(smollm2):
    tokenizer, model = smollm2
    original = tokenizer.eos_token
    try:
        # no generation config (no model folder) and <|endoftext|> as the tokenizer's EOS
        tokenizer.eos_token = "<|endoftext|>"
        loaded = LoadedSubject(model, tokenizer, (), 256, model_dir=None)
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert im_end in stop_token_ids(loaded)

        row = {
            "id": "capital",
            "messages": [
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": ANSWER},
            ],
        }
        job = ScoringJob(
            evaluation="evaluations/generation-test",
            task_type=TaskType.CAUSAL_LM,
            subjects=(),
            sets=(),
            scoring=ScoringSettings(
                max_generation_examples=1, max_new_tokens=40, max_seq_length=256
            ),
            batch_size=1,
            models_root="",
        )
        outcomes = score_causal_lm(loaded, [row], job, torch.device("cpu"))
        assert outcomes.exact_matches.tolist() == [1.0]

        # what stopping at the EOS alone does: the model runs on into a next turn
        prompt = tokenizer.apply_chat_template(
            row["messages"][:1], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        with torch.inference_mode():
            unstopped = model.generate(
                input_ids=torch.tensor([prompt]),
                max_new_tokens=16,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        text = tokenizer.decode(unstopped[0, len(prompt) :], skip_special_tokens=True)
        assert text.strip() != ANSWER
        assert text.startswith(ANSWER)
    finally:
        tokenizer.eos_token = original
