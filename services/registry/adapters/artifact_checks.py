"""The registry checks a checkpoint's artifact at its source instead of taking an event's word.

A CheckpointReady names the adapter production will serve (``artifact_uri``) and its digest
(``sha256``). Whoever can write that topic could name any file, so the registry

* registers a checkpoint only if its URI lies under the trainer's artifact root
  (TUNELINE_REGISTRY_TRAINER_ARTIFACT_ROOT): same scheme and bucket, then a valid key — no
  ``..``, no other service's area, no other bucket;
* takes an evaluation's merged release model (``parity.merged_artifact_uri``, served next to
  the adapter) only if it lies under the evaluator's artifact root
  (TUNELINE_REGISTRY_EVALUATOR_ARTIFACT_ROOT), by the same rules;
* before an alias moves to a checkpoint, reads the artifact through the artifact store
  (local folder or S3, whichever the root is) and recomputes its folder digest
  (:func:`shared.modeling.models.folder_sha256`, the one the trainer records): production never
  points at bytes other than those the trainer wrote and the evaluator scored.
"""

from __future__ import annotations

from shared.artifacts import ArtifactError, ArtifactStore, artifact_uri_problem
from shared.modeling.models import folder_sha256

#: The ``check`` label of tuneline_registry_artifacts_refused_total.
LOCATION = "location"
CONTENT = "sha256"
RELEASE_LOCATION = "release_location"


class ArtifactVerifier:
    """Checks checkpoint artifacts against the trainer's artifact root and their digest, and
    merged release models against the evaluator's artifact root."""

    def __init__(
        self, store: ArtifactStore, trainer_root: str, *, evaluator_root: str | None = None
    ) -> None:
        self._store = store
        #: The trainer's artifact root as a URI (``file:///…`` or ``s3://bucket/prefix``).
        self.trainer_root = trainer_root
        #: The evaluator's artifact root as a URI (where it writes merged release models);
        #: None checks no release URI (the service always sets it).
        self.evaluator_root = evaluator_root

    def location_problem(self, uri: str) -> str:
        """Why ``uri`` is not in the trainer's artifact area, or "" when it is."""
        problem = artifact_uri_problem(uri, self.trainer_root)
        return f"artifact_uri is not in the trainer's artifact area: {problem}" if problem else ""

    def release_location_problem(self, uri: str) -> str:
        """Why a merged release URI is not in the evaluator's artifact area ("" when it is, or
        when there is none: an evaluation without a merged model announces no URI)."""
        if not uri or self.evaluator_root is None:
            return ""
        problem = artifact_uri_problem(uri, self.evaluator_root)
        return (
            f"merged_artifact_uri is not in the evaluator's artifact area: {problem}"
            if problem
            else ""
        )

    def content_problem(self, uri: str, sha256: str) -> str:
        """Why the artifact at ``uri`` is not the one recorded as ``sha256``, or "" when it is.

        Reads (and for a remote store downloads) the whole folder: call it before an alias
        moves, not on every read.
        """
        location = self.location_problem(uri)
        if location:
            return location
        if not sha256:
            return "the checkpoint records no sha256 to verify its artifact against"
        try:
            path = self._store.materialize(uri)
        except ArtifactError as error:
            return f"the artifact cannot be read: {error}"
        if not path.is_dir():
            return "there is no adapter folder at artifact_uri"
        actual = folder_sha256(path)
        if actual != sha256:
            return f"the artifact's sha256 is {actual}, the checkpoint records {sha256}"
        return ""
