"""Frozen, mean-pooled text embeddings of a base model (imports torch).

The data checks that need a notion of "similar text" — the label audit, coverage and shift —
read a dataset through the frozen backbone of a base model: no head, no adapter, no training.
Each text becomes the mean of its last hidden states over the real (attention-masked) tokens,
L2-normalised by default so that a dot product is a cosine similarity.

Deterministic: the model is in eval mode, gradients are off, weights are fp32 on CPU (bf16 only
when the caller asks for it on CUDA), and a text's vector does not depend on its batch
neighbours beyond floating-point padding effects (texts are batched by length to keep padding,
and therefore cost, small; the output keeps the input order).

Usage::

    embedder = TextEmbedder.load(resolved_model)          # or TextEmbedder.from_folder(path)
    vectors = embedder.embed(["a text", "another"])       # numpy float32, shape (2, hidden)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from shared.modeling.errors import ModelLoadFailed
from shared.modeling.loading import SAFE_LOAD_KWARGS, load_tokenizer, resolve_device
from shared.modeling.models import ResolvedModel

DEFAULT_BATCH_SIZE = 64
#: Tokens kept of each text: the data checks compare what texts are about, which the first
#: 128 tokens say; longer windows cost quadratically in attention for little gain.
DEFAULT_MAX_LENGTH = 128


@dataclass
class TextEmbedder:
    """A frozen backbone and its tokenizer, ready to embed texts."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    max_length: int = DEFAULT_MAX_LENGTH
    batch_size: int = DEFAULT_BATCH_SIZE

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> TextEmbedder:
        """Load the backbone (``AutoModel``: no task head) of a checked model folder.

        ``folder`` must already have passed :func:`shared.modeling.models.resolve_base_model`
        (or :func:`~shared.modeling.models.check_model_folder`); use :meth:`load` with a
        :class:`ResolvedModel` where one is at hand.
        """
        target = resolve_device(device)
        tokenizer = load_tokenizer(folder)
        kwargs: dict[str, Any] = {
            **SAFE_LOAD_KWARGS,
            "use_safetensors": True,
            # fp32 unless asked: embeddings feed statistics, and fp32 is reproducible on CPU
            "dtype": dtype or torch.float32,
        }
        try:
            model = AutoModel.from_pretrained(folder, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ModelLoadFailed(
                f"cannot load model {folder.name!r} for embeddings: {error}"
            ) from error
        model.to(target)
        model.eval()
        model.requires_grad_(False)
        return cls(model, tokenizer, target, max_length=max_length, batch_size=batch_size)

    @classmethod
    def load(
        cls,
        model: ResolvedModel,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> TextEmbedder:
        """:meth:`from_folder` for a resolved (checked and hashed) base model."""
        return cls.from_folder(
            model.path, device=device, dtype=dtype, max_length=max_length, batch_size=batch_size
        )

    @property
    def dimension(self) -> int:
        """The length of each vector (the backbone's hidden size)."""
        return int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str], *, normalize: bool = True) -> np.ndarray:
        """Mean-pooled last hidden states of ``texts``: float32 array ``(len(texts), dimension)``
        in the order given. ``normalize`` scales each vector to unit L2 norm."""
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return vectors
        # batch texts of similar length together (less padding), then put results back in order
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                encoded = self.tokenizer(
                    [texts[index] for index in chunk],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(
                    input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
                ).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                vectors[chunk] = pooled.float().cpu().numpy()
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors /= np.maximum(norms, 1e-12)
        return vectors


def embed_texts(
    texts: Sequence[str],
    model: ResolvedModel,
    *,
    device: str | torch.device | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
    normalize: bool = True,
) -> np.ndarray:
    """One-shot :meth:`TextEmbedder.embed` (loads the model each call: keep a
    :class:`TextEmbedder` to embed several sets)."""
    embedder = TextEmbedder.load(model, device=device, max_length=max_length, batch_size=batch_size)
    return embedder.embed(texts, normalize=normalize)
