"""The parity check on real adapters: LoRA and DoRA trained for a few steps on the packaged
encoder (all-MiniLM-L6-v2), measured by the engine in the worker's code path, judged against
serving profiles, and the merged release model kept content-addressed (imports torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from services.evaluator.adapters.engine import score
from services.evaluator.adapters.parity_job import ParityJob
from services.evaluator.adapters.release import check_parity
from services.evaluator.adapters.scoring import (
    RowSource,
    ScoringJob,
    SubjectRole,
    SubjectSpec,
)
from services.evaluator.domain.evaluation import BaseModelRef, ModelSpec, ScoringSettings
from services.evaluator.domain.parity import (
    ParityKind,
    ParityVerdict,
    ServingProfileSpec,
    TokenizerFacts,
)
from shared.artifacts import LocalArtifactStore
from shared.modeling import encode_rows, folder_sha256
from shared.modeling.batching import pad_batch
from shared.modeling.loading import load_checkpoint, load_tokenizer
from shared.modeling.packaged import ENCODER, prepare_packaged_models
from shared.task_types import TaskType
from tests.fixtures.adapters import train_classification_adapter
from tests.fixtures.trainer_data import sentiment_rows, write_split

SCORING = ScoringSettings(max_generation_examples=0, max_new_tokens=1, max_seq_length=64)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    prepare_packaged_models(root, names=(ENCODER,))
    return root


def _measure(models_root: Path, tmp_path: Path, *, use_dora: bool):
    rows = sentiment_rows(60, seed=3)
    split = write_split(tmp_path / "data", rows, validation_fraction=0.5)
    adapter = train_classification_adapter(
        models_root=models_root,
        base_model_name=ENCODER,
        rows=[r for r in rows if r["id"] in set(split.train_ids)],
        labels=split.labels,
        out=tmp_path / "adapter",
        steps=6,
        learning_rate=5e-3,
        use_dora=use_dora,
    )
    staging = tmp_path / "staging"
    staging.mkdir()
    source = RowSource(
        set_key="primary",
        dataset_path=str(split.dataset_path),
        dataset_sha256=split.dataset_sha256,
        manifest_path=str(split.manifest_path),
        manifest_sha256=split.manifest_sha256,
    )
    job = ScoringJob(
        evaluation="evaluations/parity",
        task_type=TaskType.CLASSIFICATION,
        subjects=(
            SubjectSpec("candidate", SubjectRole.CANDIDATE, BaseModelRef(ENCODER), str(adapter)),
        ),
        sets=(source,),
        scoring=SCORING,
        batch_size=8,
        models_root=str(models_root),
        device="cpu",
        parity=ParityJob("primary", max_examples=16, merged_output_dir=str(staging / "model")),
    )
    return adapter, split, score(job)


def _model(profile: ServingProfileSpec | None) -> ModelSpec:
    return ModelSpec(
        name="models/m",
        task_type=TaskType.CLASSIFICATION,
        base_model=BaseModelRef(ENCODER),
        evaluation_set=None,  # type: ignore[arg-type] - not read by the parity check
        golden_sets=(),
        gate_policy=None,  # type: ignore[arg-type]
        serving_profile=profile,
    )


def test_a_dora_adapter_with_a_trained_head_fails_on_an_engine_without_either(
    models_root: Path, tmp_path: Path
):
    _, _, result = _measure(models_root, tmp_path, use_dora=True)
    measured = result.parity
    assert measured is not None
    assert measured.measurement is not None
    assert measured.adapter.use_dora
    assert "classifier" in measured.adapter.modules_to_save
    assert measured.tokenizer.tokenizer_name == ENCODER  # recomputed: fixture predates records
    vllm = ServingProfileSpec(engine="vllm-0.6", max_lora_rank=16, serving_tokenizer=None)
    parity = check_parity(LocalArtifactStore(tmp_path / "store"), _model(vllm), result)
    assert parity is not None
    assert parity.verdict is ParityVerdict.FAILED
    failed = {f.kind for f in parity.findings if f.verdict is ParityVerdict.FAILED}
    assert failed == {ParityKind.DORA, ParityKind.MODULES_TO_SAVE}
    # the merge itself is faithful in fp32: only the engine cannot serve it unmerged
    assert parity.fp32_max_abs_logit_delta <= 1e-4
    assert parity.bf16_agreement >= 0.995
    assert parity.example_count == 16


def test_a_lora_adapter_passes_and_its_merged_release_serves_the_same_logits(
    models_root: Path, tmp_path: Path
):
    adapter, split, result = _measure(models_root, tmp_path, use_dora=False)
    assert result.parity is not None
    trained = result.parity.tokenizer
    profile = ServingProfileSpec(
        engine="tuneline-serving",
        max_lora_rank=8,
        supports_modules_to_save=True,
        max_sequence_length=512,
        serving_tokenizer=TokenizerFacts(
            tokenizer_name=ENCODER,
            tokenizer_sha256=trained.tokenizer_sha256,
            max_sequence_length=64,
        ),
    )
    store = LocalArtifactStore(tmp_path / "store")
    parity = check_parity(store, _model(profile), result)
    assert parity is not None
    assert parity.verdict is ParityVerdict.PASSED, parity.summary()
    assert parity.fp32_max_abs_logit_delta <= 1e-4
    merged_dir = store.materialize(parity.merged_artifact_uri)
    assert folder_sha256(merged_dir) == parity.merged_sha256
    assert not (tmp_path / "staging").exists(), "the staging folder is cleaned up"
    # an engine without LoRA loads the merged folder as a plain model and gets the same logits
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    unmerged = load_checkpoint(adapter, models_root=models_root, device="cpu")
    tokenizer = load_tokenizer(merged_dir)
    rows = [r for r in sentiment_rows(60, seed=3) if r["id"] in set(split.validation_ids)][:8]
    examples = encode_rows(tokenizer, rows, "classification", max_length=64, labels=split.labels)
    batch = pad_batch(examples, int(tokenizer.pad_token_id))
    with torch.inference_mode():
        a = merged(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        b = unmerged.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert float((a - b).abs().max()) <= 1e-4
