"""The serving engine on real (tiny) models: what Predict and Generate run, and the fingerprint
serving compares with the trainer's."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.serving.adapters.engine import TorchModelLoader
from services.serving.domain import Release, ReleaseRefused
from services.serving.domain.releases import RefusalReason
from shared.modeling.loading import load_tokenizer
from shared.modeling.tokenizer_fingerprint import fingerprint_tokenizer
from shared.task_types import TaskType
from tests.fixtures.adapters import save_causal_lm_adapter, train_classification_adapter
from tests.fixtures.trainer_data import build_tiny_bert, build_tiny_llama


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_tiny_bert(root / "tiny-bert")
    build_tiny_llama(root / "tiny-llama")
    return root


def _release(folder: Path, task: TaskType) -> Release:
    return Release("models/m", "models/m/checkpoints/c", 1, folder.as_uri(), "", task)


def test_a_classifier_scores_every_label_and_fingerprints_its_tokenizer(
    models_root: Path, tmp_path: Path
) -> None:
    adapter = train_classification_adapter(
        models_root=models_root,
        base_model_name="tiny-bert",
        rows=[],
        labels=("neg", "pos"),
        out=tmp_path / "adapter",
        steps=0,
        target_modules=("query", "value"),
        max_length=32,
    )
    loader = TorchModelLoader(models_root=models_root, device="cpu")
    model = loader.load(adapter, _release(adapter, TaskType.CLASSIFICATION))
    assert (model.task, list(model.labels), model.device) == (
        TaskType.CLASSIFICATION,
        ["neg", "pos"],
        "cpu",
    )
    scores = model.classify("a film " * 100)  # longer than max_length: truncated, not refused
    assert len(scores) == 2
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    expected = fingerprint_tokenizer(
        load_tokenizer(models_root / "tiny-bert"),
        name="tiny-bert",
        max_sequence_length=32,
        model_dir=models_root / "tiny-bert",
    )
    assert model.fingerprint() == expected  # what the trainer records for the same checkpoint


def test_a_causal_lm_generates_greedily_within_its_budget(
    models_root: Path, tmp_path: Path
) -> None:
    adapter = save_causal_lm_adapter(
        models_root=models_root, base_model_name="tiny-llama", out=tmp_path / "lm", perturb=0.1
    )
    loader = TorchModelLoader(models_root=models_root, device="cpu")
    model = loader.load(adapter, _release(adapter, TaskType.CAUSAL_LM))
    first = model.generate("Hello, how are you?", 6)
    assert 1 <= first.token_count <= 6
    assert isinstance(first.text, str)
    assert model.generate("Hello, how are you?", 6) == first  # greedy: the same every time


def test_a_folder_that_is_no_checkpoint_is_refused(models_root: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    loader = TorchModelLoader(models_root=models_root, device="cpu")
    with pytest.raises(ReleaseRefused) as refused:
        loader.load(tmp_path / "empty", _release(tmp_path / "empty", TaskType.CLASSIFICATION))
    assert refused.value.reason is RefusalReason.LOAD_FAILED
