"""Padding-free attention for packed causal-LM batches on CUDA (imports torch).

A packed batch is one row holding several examples back to back. Attention must stay inside
each example. transformers handles that on every backend from ``position_ids`` alone (it
builds a block-diagonal causal mask), but a dense mask costs quadratic work over the whole
row. On CUDA this module registers :data:`VARLEN_ATTENTION`, an attention implementation that
calls PyTorch's own variable-length flash kernel (``torch.nn.attention.varlen``) with the
examples' cumulative lengths (``cu_seq_lens_q``), so no work is spent on padding or across
examples.

``varlen_attn`` changed its keywords between torch releases: 2.9 and 2.10 take ``is_causal``
only; later ones take ``window_size`` (causal is ``(-1, 0)``), ``scale`` and ``enable_gqa``.
:class:`VarlenKernel` reads the installed signature once and :func:`call_varlen` adapts: the
causal flag either way, grouped K/V heads repeated when ``enable_gqa`` is missing, a custom
softmax scale folded into the query when ``scale`` is missing (the kernel then applies its
default ``1/sqrt(head_dim)``). :func:`varlen_attention_available` checks once, on the device
and dtype in use, that the kernel runs forward and backward, and says why when it does not;
the training loop then falls back to length-grouped padded batches, logs a warning and reports
the fallback (``tuneline_trainer_engine_fallbacks_total``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention.varlen import varlen_attn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

log = logging.getLogger(__name__)

#: The name the implementation is registered under (``attn_implementation=...``).
VARLEN_ATTENTION = "tuneline_varlen"


@dataclass(frozen=True)
class VarlenKernel:
    """Which keywords the installed ``varlen_attn`` takes."""

    #: ``window_size=(left, right)``; causal is ``(-1, 0)`` (torch 2.11 and later).
    window_size: bool
    #: ``is_causal=True`` (torch 2.9 and 2.10).
    is_causal: bool
    #: ``scale=`` for a softmax scale other than ``1/sqrt(head_dim)``.
    scale: bool
    #: ``enable_gqa=`` for fewer K/V heads than query heads.
    enable_gqa: bool

    @property
    def causal(self) -> bool:
        """Whether causal attention can be asked for at all."""
        return self.window_size or self.is_causal


@functools.cache
def kernel_of(function: Callable[..., Any]) -> VarlenKernel:
    """The keywords ``function`` (a ``varlen_attn``) takes, from its signature."""
    parameters = inspect.signature(function).parameters
    return VarlenKernel(
        window_size="window_size" in parameters,
        is_causal="is_causal" in parameters,
        scale="scale" in parameters,
        enable_gqa="enable_gqa" in parameters,
    )


def call_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seq_lens: torch.Tensor,
    max_length: int,
    *,
    scaling: float | None = None,
) -> torch.Tensor:
    """Causal varlen attention over ``(tokens, heads, dim)`` tensors with this torch's kernel."""
    kernel = kernel_of(varlen_attn)
    kwargs: dict[str, Any] = {}
    if kernel.window_size:
        kwargs["window_size"] = (-1, 0)
    elif kernel.is_causal:
        kwargs["is_causal"] = True
    else:
        raise TypeError(f"varlen_attn{inspect.signature(varlen_attn)} has no causal option")
    if q.shape[1] != k.shape[1]:
        if kernel.enable_gqa:
            kwargs["enable_gqa"] = True
        else:  # one K/V head per query head, as the kernel then expects
            repeats = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
    if scaling is not None:
        if kernel.scale:
            kwargs["scale"] = scaling
        else:
            factor = scaling * math.sqrt(q.shape[-1])  # the kernel multiplies by 1/sqrt(dim)
            if not math.isclose(factor, 1.0, rel_tol=1e-6):
                q = q * factor
    out = varlen_attn(q, k, v, cu_seq_lens, cu_seq_lens, max_length, max_length, **kwargs)
    assert isinstance(out, torch.Tensor)  # no auxiliary outputs were asked for
    return out


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
    out = call_varlen(q, k, v, cu_seq_lens, int(max_length), scaling=scaling)
    return out.unsqueeze(0), None  # (1, tokens, heads, dim), as transformers expects


@functools.cache
def register_varlen_attention() -> None:
    """Make :data:`VARLEN_ATTENTION` a valid ``attn_implementation`` (once per process)."""
    AttentionInterface.register(VARLEN_ATTENTION, _varlen_forward)
    # like flash attention, it needs no dense mask: lengths come from cu_seq_lens
    AttentionMaskInterface.register(VARLEN_ATTENTION, flash_attention_mask)


@dataclass(frozen=True)
class VarlenProbe:
    """Whether the varlen kernel works here; when not, why (a metric label) and the detail."""

    available: bool
    #: ``unsupported_signature`` (this torch's ``varlen_attn`` cannot be called causally) or
    #: ``kernel_error`` (it raised: an older GPU, a dtype or head size it does not take).
    reason: str = ""
    detail: str = ""

    def __bool__(self) -> bool:
        return self.available


def varlen_attention_available(
    device: torch.device, dtype: torch.dtype, *, heads: int, kv_heads: int, head_dim: int
) -> VarlenProbe:
    """Whether the varlen kernel runs (forward and backward) here with these shapes."""
    if not kernel_of(varlen_attn).causal:
        return VarlenProbe(
            False,
            "unsupported_signature",
            f"varlen_attn{inspect.signature(varlen_attn)} takes neither window_size nor is_causal",
        )
    if device.type != "cuda":
        return VarlenProbe(False, "not_cuda", f"device {device}")
    try:
        tokens = 24
        q = torch.randn(tokens, heads, head_dim, device=device, dtype=dtype, requires_grad=True)
        k = torch.randn(tokens, kv_heads, head_dim, device=device, dtype=dtype, requires_grad=True)
        v = torch.randn(tokens, kv_heads, head_dim, device=device, dtype=dtype, requires_grad=True)
        cu = torch.tensor([0, 10, tokens], device=device, dtype=torch.int32)
        out = call_varlen(q, k, v, cu, 14, scaling=head_dim**-0.5)
        out.float().sum().backward()
        torch.cuda.synchronize(device)
    except TypeError as error:  # the signature read was not the one that runs
        return VarlenProbe(False, "unsupported_signature", repr(error))
    except Exception as error:  # noqa: BLE001 - whatever the kernel raises, say why and fall back
        return VarlenProbe(False, "kernel_error", repr(error))
    return VarlenProbe(True)
