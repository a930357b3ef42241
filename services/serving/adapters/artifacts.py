"""Fetching exactly the announced artifact: through the artifact store, digest verified."""

from __future__ import annotations

from pathlib import Path

from services.serving.domain import ReleaseRefused
from services.serving.domain.releases import RefusalReason
from shared.artifacts import ArtifactError, ArtifactStore
from shared.modeling import folder_sha256


class VerifiedArtifacts:
    """Materialises an artifact folder (remote stores download it once) and checks that its
    digest is the one the registry announced — the same digest the evaluator verified."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store

    def fetch(self, uri: str, sha256: str) -> Path:
        try:
            path = self._store.materialize(uri)
        except (ArtifactError, OSError) as error:
            raise ReleaseRefused(
                RefusalReason.ARTIFACT_UNAVAILABLE, f"cannot fetch {uri}: {error}"
            ) from error
        if not path.is_dir():
            raise ReleaseRefused(RefusalReason.ARTIFACT_UNAVAILABLE, f"no folder at {uri}")
        actual = folder_sha256(path)
        if actual != sha256:
            raise ReleaseRefused(
                RefusalReason.SHA256_MISMATCH,
                f"the folder at {uri} has sha256 {actual}; "
                f"the registry announced {sha256 or '(none)'}",
            )
        return path
