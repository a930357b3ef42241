"""The base models the trainer may use: the configured roots, resolved and hashed (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.trainer.domain.config import BaseModelRef
from shared.modeling import FolderHashCache, ResolvedModel, resolve_base_model


class ModelCatalog:
    """Resolves a job's base model under the models root or the allowed roots, refusing
    unsafe folders, and remembers folder hashes between requests."""

    def __init__(self, models_root: Path, allowed_roots: Sequence[Path] = ()) -> None:
        self.models_root = models_root.expanduser()
        self.allowed_roots = [Path(r).expanduser() for r in allowed_roots]
        self._hashes = FolderHashCache()

    def resolve(self, ref: BaseModelRef) -> ResolvedModel:
        """The checked, hashed model folder; raises :class:`~shared.modeling.ModelNotFound`
        or :class:`~shared.modeling.ModelRefused`."""
        return resolve_base_model(
            model_name=ref.model_name,
            model_path=ref.model_path,
            models_root=self.models_root,
            allowed_roots=self.allowed_roots,
            hashes=self._hashes,
        )

    @staticmethod
    def max_length(model: ResolvedModel) -> int | None:
        """The longest input the model's config allows, when it says."""
        config = model.config()
        for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = config.get(key)
            if isinstance(value, int) and value > 0:
                return value
        return None
