"""Encoded examples → tensors: padded batches, and padding-free packed batches (imports torch).

:func:`pad_batch` right-pads to the longest example (attention mask marks real tokens); this is
what the evaluator uses. :func:`pack_batch` concatenates causal-LM examples into one row with
``position_ids`` restarting at 0 for each example and cumulative lengths (``cu_seq_lens``):
attention never crosses examples (transformers builds a block-diagonal causal mask from the
restarting positions; varlen attention kernels use ``cu_seq_lens``), and the first token of each
example carries no loss, so a packed batch gives the same loss as the examples one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from shared.modeling.encoding import IGNORE_INDEX, EncodedExample


@dataclass(frozen=True)
class Batch:
    """Model inputs plus targets.

    ``labels``: class indices ``(B,)`` for classification; token targets ``(B, T)`` with
    ``-100`` for causal LM. ``weights``: per example ``(B,)``. ``tokens``: real (non-padding)
    tokens; ``loss_tokens``: positions carrying loss after the shift (examples, for
    classification). Packed batches have ``B == 1``, no attention mask, ``position_ids``,
    ``cu_seq_lens`` (``int32``, ``(N + 1,)``), ``max_length`` and ``sequence_index`` (which
    example each token belongs to).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    tokens: int
    loss_tokens: int
    examples: int
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    cu_seq_lens: torch.Tensor | None = None
    max_length: int = 0
    sequence_index: torch.Tensor | None = None

    @property
    def padded_tokens(self) -> int:
        """Tensor positions, padding included."""
        return int(self.input_ids.numel())

    def pin_memory(self) -> Batch:
        """The same batch in page-locked host memory, so that copying it to a CUDA device with
        ``non_blocking`` is asynchronous (from pageable memory the copy blocks)."""

        def pin(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.pin_memory()

        return replace(
            self,
            input_ids=self.input_ids.pin_memory(),
            labels=self.labels.pin_memory(),
            weights=self.weights.pin_memory(),
            attention_mask=pin(self.attention_mask),
            position_ids=pin(self.position_ids),
            cu_seq_lens=pin(self.cu_seq_lens),
            sequence_index=pin(self.sequence_index),
        )

    def to(self, device: torch.device) -> Batch:
        """The same batch on ``device``."""

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, non_blocking=True)

        return replace(
            self,
            input_ids=self.input_ids.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            weights=self.weights.to(device, non_blocking=True),
            attention_mask=move(self.attention_mask),
            position_ids=move(self.position_ids),
            cu_seq_lens=move(self.cu_seq_lens),
            sequence_index=move(self.sequence_index),
        )


def _loss_tokens(examples: Sequence[EncodedExample]) -> int:
    return sum(e.loss_tokens for e in examples)


def pad_batch(
    examples: Sequence[EncodedExample], pad_token_id: int, *, pad_to_multiple_of: int = 1
) -> Batch:
    """Right-pad ``examples`` to the longest (rounded up to ``pad_to_multiple_of``)."""
    if not examples:
        raise ValueError("a batch needs at least one example")
    longest = max(e.length for e in examples)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    causal = examples[0].labels is not None
    token_labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = example.length
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        if causal:
            assert example.labels is not None
            token_labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
    labels = token_labels if causal else torch.tensor([e.label for e in examples], dtype=torch.long)
    return Batch(
        input_ids=input_ids,
        labels=labels,
        weights=torch.tensor([e.weight for e in examples], dtype=torch.float32),
        tokens=sum(e.length for e in examples),
        loss_tokens=_loss_tokens(examples),
        examples=len(examples),
        attention_mask=attention_mask,
    )


def pack_batch(examples: Sequence[EncodedExample]) -> Batch:
    """Concatenate causal-LM ``examples`` into one padding-free row (see module docstring)."""
    if not examples:
        raise ValueError("a batch needs at least one example")
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    owners: list[int] = []
    boundaries = [0]
    for index, example in enumerate(examples):
        if example.labels is None:
            raise ValueError("only causal-LM examples can be packed")
        ids += example.input_ids
        # the first token of an example is never a target: its "previous token" belongs to
        # the example before it
        labels += [IGNORE_INDEX, *example.labels[1:]]
        positions += range(example.length)
        owners += [index] * example.length
        boundaries.append(boundaries[-1] + example.length)
    return Batch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        labels=torch.tensor([labels], dtype=torch.long),
        weights=torch.tensor([e.weight for e in examples], dtype=torch.float32),
        tokens=len(ids),
        loss_tokens=_loss_tokens(examples),
        examples=len(examples),
        position_ids=torch.tensor([positions], dtype=torch.long),
        cu_seq_lens=torch.tensor(boundaries, dtype=torch.int32),
        max_length=max(e.length for e in examples),
        sequence_index=torch.tensor([owners], dtype=torch.long),
    )
