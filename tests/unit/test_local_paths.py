"""Messages API clients read name resources, never the server's file paths.

The artifact store's errors name keys; the modeling errors name a model as the request named
it and a file by what it is; and whatever torch, transformers or the OS quote into a failure
message is cut to the last component before a job or an evaluation stores it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.evaluator.domain.evaluation import (
    BaseModelRef,
    CheckpointRef,
    Evaluation,
    FailureReason,
)
from services.splitter.adapters.artifacts import UnreadableDatasetContent, read_split_rows
from services.splitter.adapters.protos import version_from_event
from shared.artifacts import ArtifactError, LocalArtifactStore
from shared.local_paths import without_local_paths
from shared.modeling import (
    DataUnavailable,
    ModelNotFound,
    ModelRefused,
    read_canonical_rows,
    read_split_manifest,
    resolve_base_model,
)
from tests.fixtures.dataset_side import write_dataset_version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[Errno 2] No such file or directory: '/var/lib/tuneline/trainer/artifacts/s.pt'",
            "[Errno 2] No such file or directory: '…/s.pt'",
        ),
        ("cannot read file:///tmp/x/splitter/artifacts/m.json now", "cannot read …/m.json now"),
        (
            "Can't load tokenizer for '/root/.cache/models/tiny-bert/'.",
            "Can't load tokenizer for '…/tiny-bert'.",
        ),
        ("in /usr/lib/python3/site.py, line 3", "in …/site.py, line 3"),
    ],
)
def test_local_paths_are_cut_to_their_last_component(text: str, expected: str) -> None:
    assert without_local_paths(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "datasets/reviews/versions/v1/splits/s1 and trainingJobs/j/checkpoints/step-4",
        "120 tokens/s, ratios 0.8/0.2",
        "POST http://127.0.0.1:9095/v1/alerts or s3://bucket/key/part",
        "model path '/etc' is outside",  # one component: what the client itself sent
    ],
)
def test_resource_names_urls_and_ratios_stay(text: str) -> None:
    assert without_local_paths(text) == text


def test_artifact_store_errors_name_the_key(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    missing = store.root / "splits" / "d" / "manifest.json"
    with pytest.raises(ArtifactError) as raised:
        store.open(missing.as_uri())
    assert str(raised.value) == "artifact 'splits/d/manifest.json' does not exist"
    assert raised.value.uri == missing.as_uri()  # kept for the logs
    with pytest.raises(ArtifactError) as outside:
        store.open((tmp_path / "elsewhere" / "x").as_uri())
    assert str(tmp_path) not in str(outside.value)


def test_modeling_errors_name_the_model_not_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "models"
    pickled = root / "pickled"
    pickled.mkdir(parents=True)
    (pickled / "config.json").write_text('{"model_type": "bert"}')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ModelNotFound) as missing:
        resolve_base_model(model_name="absent", models_root=root)
    with pytest.raises(ModelRefused) as refused:
        resolve_base_model(model_name="pickled", models_root=root)
    with pytest.raises(ModelRefused) as outside:
        resolve_base_model(model_path="/etc/ssl", models_root=root)
    for error in (missing.value, refused.value, outside.value):
        assert str(tmp_path) not in str(error), error
    assert "'absent'" in str(missing.value)
    assert "'pickled'" in str(refused.value)
    assert "pytorch_model.bin" in str(refused.value)


def test_split_data_errors_say_what_the_file_is_not_where(tmp_path: Path) -> None:
    manifest = tmp_path / "splits" / "manifest.json"
    with pytest.raises(DataUnavailable) as unreadable:
        read_split_manifest(manifest)
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"parts": {}}))
    with pytest.raises(DataUnavailable) as malformed:
        read_split_manifest(manifest)
    content = tmp_path / "content.jsonl"
    content.write_bytes(b'{"id": "a"}\nnot json\n')
    with pytest.raises(DataUnavailable) as corrupt:
        read_canonical_rows(content)
    for error in (unreadable.value, malformed.value, corrupt.value):
        assert str(tmp_path) not in str(error), error
    assert "split manifest" in str(unreadable.value)
    assert "line 2" in str(corrupt.value)


def test_a_failed_evaluation_keeps_no_local_path() -> None:
    evaluation = Evaluation(
        name="evaluations/e1",
        checkpoint=CheckpointRef(
            name="trainingJobs/j/checkpoints/step-4",
            sha256="a" * 64,
            artifact_uri="file:///srv/tuneline/trainer/artifacts/jobs/j/step-4",
            training_job="trainingJobs/j",
            target_model="models/m",
            step=4,
            is_best=True,
            is_final=True,
            task_type=None,
            base_model=BaseModelRef(model_name="tiny-bert"),
        ),
        model="models/m",
        create_time=datetime.now(UTC),
    )
    failed = evaluation.failed(
        FailureReason.MODEL_LOAD_FAILED,
        "cannot load: [Errno 2] No such file: '/srv/tuneline/evaluator/cache/x/config.json'",
        datetime.now(UTC),
    )
    assert failed.failure_message == "cannot load: [Errno 2] No such file: '…/config.json'"


def test_a_refused_split_names_the_version_and_the_artifact_key(tmp_path: Path) -> None:
    event = write_dataset_version(tmp_path, "reviews", [{"text": "a", "label": "x"}])
    Path(event.artifact_uri.removeprefix("file://")).unlink()
    store = LocalArtifactStore(tmp_path / "splitter" / "artifacts", readable_roots=[tmp_path])
    with pytest.raises(UnreadableDatasetContent) as raised:
        read_split_rows(store, version_from_event(event))
    (violation,) = raised.value.violations
    assert violation.subject == event.dataset_version
    for text in (raised.value.message, violation.subject, violation.description):
        assert str(tmp_path) not in text, text
