"""Padding-free attention for packed causal-LM batches on CUDA (imports torch).

A packed batch is one row holding several examples back to back. Attention must stay inside
each example. transformers handles that on every backend from ``position_ids`` alone (it
builds a block-diagonal causal mask), but a dense mask costs quadratic work over the whole
row. On CUDA this module registers :data:`VARLEN_ATTENTION`, an attention implementation that
calls PyTorch's own variable-length flash kernel (``torch.nn.attention.varlen``) with the
examples' cumulative lengths (``cu_seq_lens_q``), so no work is spent on padding or across
examples. :func:`varlen_attention_available` checks once, on the device and dtype in use, that
the kernel runs forward and backward; when it does not (an older GPU, fp32), training uses
``sdpa`` with the mask built from ``position_ids`` instead — the same numbers, more work.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch.nn.attention.varlen import varlen_attn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

log = logging.getLogger(__name__)

#: The name the implementation is registered under (``attn_implementation=...``).
VARLEN_ATTENTION = "tuneline_varlen"


def _varlen_forward(  # noqa: PLR0917 - transformers' attention-function signature
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; q/k/v are ``(1, heads, tokens, dim)``."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    max_length = kwargs.get("max_length_q")
    if cu_seq_lens is None or max_length is None or query.shape[0] != 1:
        raise RuntimeError(
            f"{VARLEN_ATTENTION} attention needs packed batches (batch 1, cu_seq_lens_q and "
            "max_length_q)"
        )
    q = query[0].transpose(0, 1)  # (tokens, heads, dim)
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    out = varlen_attn(
        q,
        k,
        v,
        cu_seq_lens,
        cu_seq_lens,
        int(max_length),
        int(max_length),
        scale=scaling,
        window_size=(-1, 0),  # causal
        enable_gqa=q.shape[1] != k.shape[1],
    )
    assert isinstance(out, torch.Tensor)  # no auxiliary outputs were asked for
    return out.unsqueeze(0), None  # (1, tokens, heads, dim), as transformers expects


@functools.cache
def register_varlen_attention() -> None:
    """Make :data:`VARLEN_ATTENTION` a valid ``attn_implementation`` (once per process)."""
    AttentionInterface.register(VARLEN_ATTENTION, _varlen_forward)
    # like flash attention, it needs no dense mask: lengths come from cu_seq_lens
    AttentionMaskInterface.register(VARLEN_ATTENTION, flash_attention_mask)


def varlen_attention_available(
    device: torch.device, dtype: torch.dtype, *, heads: int, kv_heads: int, head_dim: int
) -> bool:
    """Whether the varlen kernel runs (forward and backward) here with these shapes."""
    if device.type != "cuda":
        return False
    try:
        tokens = 24
        q = torch.randn(tokens, heads, head_dim, device=device, dtype=dtype, requires_grad=True)
        k = torch.randn(tokens, kv_heads, head_dim, device=device, dtype=dtype, requires_grad=True)
        v = torch.randn(tokens, kv_heads, head_dim, device=device, dtype=dtype, requires_grad=True)
        cu = torch.tensor([0, 10, tokens], device=device, dtype=torch.int32)
        out = varlen_attn(
            q, k, v, cu, cu, 14, 14, window_size=(-1, 0), enable_gqa=heads != kv_heads
        )
        assert isinstance(out, torch.Tensor)
        out.float().sum().backward()
        torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001 - any failure means: use sdpa instead
        log.info(
            "varlen attention unavailable, packing falls back to sdpa", extra={"error": repr(error)}
        )
        return False
    return True
