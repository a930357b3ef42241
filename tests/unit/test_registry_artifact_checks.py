"""The registry's artifact checks over both artifact stores: a local folder and S3 (moto).

The trainer stores an adapter folder with ``put_directory`` in its own area; the registry,
through its own store, finds it there and re-hashes it, and refuses anything elsewhere or
anything whose bytes changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.registry.adapters.artifact_checks import ArtifactVerifier
from shared.artifacts import ArtifactStore, LocalArtifactStore, root_uri
from shared.modeling.models import folder_sha256
from shared.s3_artifacts import S3ArtifactStore


def _adapter(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "tuneline_adapter.json").write_text("{}")
    return folder


def _stores(kind: str, request: pytest.FixtureRequest, tmp: Path) -> tuple[ArtifactStore, ...]:
    """(the trainer's store, the registry's store) on one backend."""
    if kind == "local":
        trainer = LocalArtifactStore(tmp / "data" / "trainer" / "artifacts")
        return trainer, LocalArtifactStore(tmp / "data" / "registry", readable_roots=[tmp / "data"])
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return (
        S3ArtifactStore(bucket, "trainer", endpoint_url=endpoint, cache_dir=tmp / "trainer-cache"),
        S3ArtifactStore(bucket, "registry", endpoint_url=endpoint, cache_dir=tmp / "cache"),
    )


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_the_trainers_artifact_is_found_rehashed_and_trusted(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    trainer, registry = _stores(kind, request, tmp_path)
    location = trainer.location if kind == "s3" else Path(trainer.location)
    verifier = ArtifactVerifier(registry, root_uri(location))
    folder = _adapter(tmp_path / "adapter", b"weights")
    stored = trainer.put_directory("j1/checkpoints/step-10", folder)
    sha256 = folder_sha256(folder)
    assert verifier.location_problem(stored.uri) == ""
    assert verifier.content_problem(stored.uri, sha256) == ""

    wrong = verifier.content_problem(stored.uri, folder_sha256(_adapter(tmp_path / "b", b"x")))
    assert "the checkpoint records" in wrong
    # the trainer's key replaced by other bytes after the event was published
    trainer.put_directory("j2/checkpoints/step-10", _adapter(tmp_path / "c", b"attacker"))
    swapped = stored.uri.replace("/j1/", "/j2/")
    assert "sha256" in verifier.content_problem(swapped, sha256)
    # the registry's own area (or any other service's) is not the trainer's
    elsewhere = registry.put_directory("j1/checkpoints/step-10", folder).uri
    assert "not in the trainer's artifact area" in verifier.content_problem(elsewhere, sha256)
    missing = verifier.content_problem(stored.uri + "-missing", sha256)
    assert "cannot be read" in missing or "no adapter folder" in missing, missing
