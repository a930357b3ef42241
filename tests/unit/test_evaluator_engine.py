"""The evaluation engine on tiny models built from configs: it scores what the model does.

Each test checks the engine's per-example numbers against the same model run by hand, so a
bookkeeping slip (wrong order after length sorting, a shifted token, padding counted) fails.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from services.evaluator.adapters.engine import generation_subset, length_batches, score
from services.evaluator.adapters.scoring import (
    RowSource,
    ScoringFailed,
    ScoringJob,
    SubjectRole,
    SubjectSpec,
)
from services.evaluator.domain.evaluation import BaseModelRef, FailureReason, ScoringSettings
from services.evaluator.domain.outcomes import (
    CausalLMOutcomes,
    ClassificationOutcomes,
    point_values,
)
from shared.modeling import IGNORE_INDEX, encode_rows, resolve_base_model
from shared.modeling.batching import pad_batch
from shared.modeling.loading import load_adapter, load_base_model, load_tokenizer
from shared.task_types import TaskType
from tests.fixtures.adapters import save_causal_lm_adapter, train_classification_adapter
from tests.fixtures.trainer_data import (
    build_tiny_bert,
    build_tiny_llama,
    chatterbot_rows,
    sentiment_rows,
    write_split,
)

SCORING = ScoringSettings(max_generation_examples=6, max_new_tokens=5, max_seq_length=64)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_tiny_bert(root / "tiny-bert")
    build_tiny_llama(root / "tiny-llama")
    return root


def _source(split, key: str = "eval-set") -> RowSource:
    return RowSource(
        set_key=key,
        dataset_path=str(split.dataset_path),
        dataset_sha256=split.dataset_sha256,
        manifest_path=str(split.manifest_path),
        manifest_sha256=split.manifest_sha256,
        part="validation",
    )


def _job(models_root: Path, task: TaskType, subjects, sources, *, batch_size=4) -> ScoringJob:
    return ScoringJob(
        evaluation="evaluations/test",
        task_type=task,
        subjects=tuple(subjects),
        sets=tuple(sources),
        scoring=SCORING,
        batch_size=batch_size,
        models_root=str(models_root),
        device="cpu",
        max_batch_tokens=256,
    )


def test_length_batches_group_similar_lengths_within_both_limits():
    lengths = [5, 50, 7, 48, 6, 3, 49]
    batches = length_batches(lengths, batch_size=3, max_batch_tokens=100)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) * max(lengths[i] for i in batch) <= 100 or len(batch) == 1
    assert batches[0][0] == 1  # longest first


def test_the_generation_subset_is_the_first_ids_by_hash_and_independent_of_order():
    ids = [f"q-{i}" for i in range(20)]
    chosen = generation_subset(ids, 5)
    assert chosen == generation_subset(list(reversed(ids)), 5)
    ranked = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    assert chosen == set(ranked[:5])
    assert generation_subset(ids, 50) == set(ids)


def test_classification_scores_match_the_adapter_run_by_hand(models_root, tmp_path):
    rows = sentiment_rows(80, seed=1)
    for i, row in enumerate(rows):
        row["slice"] = "short" if i % 3 == 0 else "long"
    split = write_split(tmp_path / "data", rows, validation_fraction=0.3)
    adapter = train_classification_adapter(
        models_root=models_root,
        base_model_name="tiny-bert",
        rows=[r for r in rows if r["id"] in set(split.train_ids)],
        labels=split.labels,
        out=tmp_path / "adapter",
        steps=5,
        max_length=64,
    )
    base_ref = BaseModelRef(model_name="tiny-bert")
    job = _job(
        models_root,
        TaskType.CLASSIFICATION,
        [
            SubjectSpec("candidate", SubjectRole.CANDIDATE, base_ref, str(adapter)),
            SubjectSpec("base", SubjectRole.BASELINE, base_ref),
        ],
        [_source(split)],
    )
    result = score(job)

    candidate = result.outcomes[("candidate", "eval-set")]
    assert isinstance(candidate, ClassificationOutcomes)
    assert list(candidate.example_ids) == split.validation_ids
    assert result.examples_scored == 2 * len(split.validation_ids)
    by_id = {r["id"]: r for r in rows}
    assert list(candidate.true_labels) == [by_id[i]["label"] for i in candidate.example_ids]
    assert set(candidate.slices) == {"short", "long"}

    # the same adapter, by hand, one example at a time (no batching, no sorting)
    base = resolve_base_model(model_name="tiny-bert", models_root=models_root)
    tokenizer = load_tokenizer(base.path)
    model = load_adapter(
        load_base_model(
            base, TaskType.CLASSIFICATION, labels=split.labels, pad_token_id=0, device="cpu"
        ),
        adapter,
    )
    examples = encode_rows(
        tokenizer,
        [by_id[i] for i in split.validation_ids],
        TaskType.CLASSIFICATION,
        max_length=64,
        labels=split.labels,
    )
    with torch.inference_mode():
        for index, example in enumerate(examples):
            batch = pad_batch([example], 0)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss = torch.nn.functional.cross_entropy(logits, batch.labels).item()
            assert candidate.losses[index] == pytest.approx(loss, abs=1e-5)
            assert candidate.predicted_labels[index] == split.labels[int(logits.argmax())]

    # the bare base model scores the same every time (its fresh head is seeded)
    again = score(_job(models_root, TaskType.CLASSIFICATION, [job.subjects[1]], [_source(split)]))
    bare = result.outcomes[("base", "eval-set")]
    assert np.array_equal(bare.losses, again.outcomes[("base", "eval-set")].losses)  # type: ignore[attr-defined]
    assert point_values(candidate)["loss"] != point_values(bare)["loss"]


def test_causal_lm_scores_completion_tokens_only_and_generates_a_bounded_subset(
    models_root, tmp_path
):
    rows = chatterbot_rows(40, seed=2)
    split = write_split(tmp_path / "data", rows, validation_fraction=0.5)
    adapter = save_causal_lm_adapter(
        models_root=models_root, base_model_name="tiny-llama", out=tmp_path / "adapter", perturb=0.5
    )
    base_ref = BaseModelRef(model_name="tiny-llama")
    job = _job(
        models_root,
        TaskType.CAUSAL_LM,
        [
            SubjectSpec("candidate", SubjectRole.CANDIDATE, base_ref, str(adapter)),
            SubjectSpec("base", SubjectRole.BASELINE, base_ref),
        ],
        [_source(split)],
    )
    result = score(job)
    candidate = result.outcomes[("candidate", "eval-set")]
    bare = result.outcomes[("base", "eval-set")]
    assert isinstance(candidate, CausalLMOutcomes)
    assert isinstance(bare, CausalLMOutcomes)
    assert set(candidate.example_ids) == set(split.validation_ids)

    base = resolve_base_model(model_name="tiny-llama", models_root=models_root)
    tokenizer = load_tokenizer(base.path)
    by_id = {r["id"]: r for r in rows}
    examples = encode_rows(
        tokenizer, [by_id[i] for i in candidate.example_ids], TaskType.CAUSAL_LM, max_length=64
    )
    # completion tokens (+ EOS) carry loss; prompt tokens never do
    assert [int(c) for c in candidate.token_counts] == [e.loss_tokens for e in examples]
    model = load_base_model(
        base, TaskType.CAUSAL_LM, pad_token_id=tokenizer.pad_token_id, device="cpu"
    )
    with torch.inference_mode():
        for index in (0, len(examples) - 1):
            example = examples[index]
            ids = torch.tensor([example.input_ids])
            logits = model(input_ids=ids).logits[0, :-1]
            targets = torch.tensor(example.labels[1:])
            mask = targets != IGNORE_INDEX
            loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
            assert bare.loss_sums[index] == pytest.approx(loss.item(), rel=1e-4)
            correct = int((logits.argmax(-1)[mask] == targets[mask]).sum())
            assert int(bare.correct_tokens[index]) == correct

    generated = [
        i
        for i, v in zip(candidate.example_ids, candidate.exact_matches, strict=True)
        if not math.isnan(v)
    ]
    assert set(generated) == generation_subset(
        list(candidate.example_ids), SCORING.max_generation_examples
    )
    assert candidate.metric_counts()["exact_match"] == SCORING.max_generation_examples
    # the adapter changes the model's predictions
    assert not np.allclose(candidate.loss_sums, bare.loss_sums)


def test_a_missing_candidate_adapter_is_checkpoint_unavailable(models_root, tmp_path):
    split = write_split(tmp_path / "data", sentiment_rows(30), validation_fraction=0.5)
    job = _job(
        models_root,
        TaskType.CLASSIFICATION,
        [
            SubjectSpec(
                "c",
                SubjectRole.CANDIDATE,
                BaseModelRef(model_name="tiny-bert"),
                str(tmp_path / "nope"),
            )
        ],
        [_source(split)],
    )
    with pytest.raises(ScoringFailed) as failure:
        score(job)
    assert failure.value.reason is FailureReason.CHECKPOINT_UNAVAILABLE


def test_a_broken_baseline_adapter_is_baseline_unavailable(models_root, tmp_path):
    split = write_split(tmp_path / "data", sentiment_rows(30), validation_fraction=0.5)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")
    job = _job(
        models_root,
        TaskType.CLASSIFICATION,
        [SubjectSpec("b", SubjectRole.BASELINE, BaseModelRef(model_name="tiny-bert"), str(broken))],
        [_source(split)],
    )
    with pytest.raises(ScoringFailed) as failure:
        score(job)
    assert failure.value.reason is FailureReason.BASELINE_UNAVAILABLE


def test_a_base_model_with_pickle_weights_or_other_files_is_refused(models_root, tmp_path):
    split = write_split(tmp_path / "data", sentiment_rows(30), validation_fraction=0.5)
    unsafe_root = tmp_path / "models"
    shutil.copytree(models_root / "tiny-bert", unsafe_root / "tiny-bert")
    (unsafe_root / "tiny-bert" / "pytorch_model.bin").write_bytes(b"not loaded")
    subject = SubjectSpec("b", SubjectRole.BASELINE, BaseModelRef(model_name="tiny-bert"))
    with pytest.raises(ScoringFailed) as refused:
        score(_job(unsafe_root, TaskType.CLASSIFICATION, [subject], [_source(split)]))
    assert refused.value.reason is FailureReason.MODEL_LOAD_FAILED
    assert "pickle" in refused.value.message

    changed = SubjectSpec(
        "b", SubjectRole.BASELINE, BaseModelRef(model_name="tiny-bert", files_sha256="0" * 64)
    )
    with pytest.raises(ScoringFailed) as mismatch:
        score(_job(models_root, TaskType.CLASSIFICATION, [changed], [_source(split)]))
    assert mismatch.value.reason is FailureReason.MODEL_LOAD_FAILED
    assert "files_sha256" in mismatch.value.message


def test_an_altered_manifest_is_data_unavailable(models_root, tmp_path):
    split = write_split(tmp_path / "data", sentiment_rows(30), validation_fraction=0.5)
    split.manifest_path.write_bytes(
        split.manifest_path.read_bytes().replace(b'"overlap_count":0', b'"overlap_count":1')
    )
    subject = SubjectSpec("b", SubjectRole.BASELINE, BaseModelRef(model_name="tiny-bert"))
    with pytest.raises(ScoringFailed) as failure:
        score(_job(models_root, TaskType.CLASSIFICATION, [subject], [_source(split)]))
    assert failure.value.reason is FailureReason.DATA_UNAVAILABLE
