"""The output head and its cross-entropy fused over the kept positions (imports torch).

The engine computes logits only where a completion token is predicted; even so, at a 128k
vocabulary the logits of a micro-batch, their fp32 copy and their gradient are gigabytes. Liger's
fused linear + cross-entropy (``liger-kernel``, the ``liger`` extra) computes the loss chunk by
chunk from the final hidden states and the head's weight, never holding all the logits. It is
used on CUDA when the package is installed and the head is a plain frozen ``Linear`` (not one the
adapter trains in full, ``modules_to_save``); otherwise the engine projects the kept positions
and takes the cross-entropy itself. On the CPU the plain path stays: at the vocabularies and
micro-batches a CPU trains, the logits are megabytes, and chunking only adds work.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

import torch

from services.trainer.domain.jobs import EngineFallback

log = logging.getLogger(__name__)

#: (final hidden states of the kept positions ``(N, H)``, their targets ``(N,)``) -> the
#: per-position cross-entropy ``(N,)`` in fp32.
HeadLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fused_head_loss(model: torch.nn.Module, device: torch.device) -> HeadLoss | None:
    """Liger's fused linear + cross-entropy over ``model``'s output head, or None where it
    does not apply (not CUDA, ``liger-kernel`` not installed, a head that is trained or has a
    bias, a model without a separate decoder)."""
    if device.type != "cuda" or importlib.util.find_spec("liger_kernel") is None:
        return None
    head = model.get_output_embeddings()  # type: ignore[operator]
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    if decoder_of(model) is None:
        return None
    from liger_kernel.transformers import (  # noqa: PLC0415 - optional, CUDA only
        LigerFusedLinearCrossEntropyLoss,
    )

    fused = LigerFusedLinearCrossEntropyLoss(reduction="none", accum_dtype=torch.float32)

    def loss(hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return fused(head.weight, hidden, targets).float()

    return loss


def decoder_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The transformer body under the LM head (its output: the final hidden states), adapter
    layers included; None when the model does not expose one."""
    get_base_model: Callable[[], torch.nn.Module] | None = getattr(model, "get_base_model", None)
    base = get_base_model() if get_base_model is not None else model
    get_decoder: Callable[[], object] | None = getattr(base, "get_decoder", None)
    decoder = get_decoder() if get_decoder is not None else None
    return decoder if isinstance(decoder, torch.nn.Module) and decoder is not base else None


def liger_layer_kernels(model: torch.nn.Module, device: torch.device) -> EngineFallback | None:
    """Liger's RMSNorm, RoPE and SwiGLU kernels swapped into ``model``'s layers in place, for a
    CUDA run whose layers are not compiled (compile turned off, or it failed: these fuse the
    same operations by hand). None when applied or not applicable (not CUDA, ``liger-kernel``
    not installed); the fallback taken when Liger does not know the model or fails."""
    if device.type != "cuda" or importlib.util.find_spec("liger_kernel") is None:
        return None
    from liger_kernel.transformers import (  # noqa: PLC0415 - optional, CUDA only
        _apply_liger_kernel_to_instance,
    )

    get_base_model: Callable[[], torch.nn.Module] | None = getattr(model, "get_base_model", None)
    base = get_base_model() if get_base_model is not None else model
    try:
        # the loss is the engine's own (fused_head_loss): only the layers' kernels here
        _apply_liger_kernel_to_instance(
            model=base,
            rope=True,
            rms_norm=True,
            swiglu=True,
            cross_entropy=False,
            fused_linear_cross_entropy=False,
        )
    except Exception as error:  # noqa: BLE001 - an unknown model type or a Liger bug: eager
        detail = " ".join(f"{type(error).__name__}: {error}".split())[:500]
        log.warning("Liger layer kernels not applied", extra={"detail": detail})
        return EngineFallback("liger_layers", "liger_failed", detail)
    return None
