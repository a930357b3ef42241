"""Regional ``torch.compile``: each decoder layer of the model compiled on its own (imports torch).

Compiling the layers one by one rather than the whole model keeps compile time to one layer's
graph (every layer has the same code, so the compiled code is reused), and leaves out what
does not belong in a graph: the boolean selection of the positions that get logits, the output
head and the loss (data-dependent shapes), and the optimizer. Inside a layer it fuses RMSNorm,
RoPE, SiLU·mul and the adapters' scale and add. The token dimension is dynamic, so packed
batches of any length reuse one compiled graph.

Compilation is lazy: a backend that cannot compile (no C++ compiler for the CPU, a Triton
problem, an operator it does not know) fails at the first call. :func:`compile_or_fall_back`
therefore runs one forward and backward through the compiled layers before training, and on a
failure puts the layers back to eager and says so (a warning and an :class:`EngineFallback`,
which the trainer counts in ``tuneline_trainer_engine_fallbacks_total``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from services.trainer.domain.jobs import EngineFallback

log = logging.getLogger(__name__)

#: The ``torch.compile`` backend (a name, or a callable; tests swap in a failing one).
COMPILE_BACKEND: str | Callable[..., Any] = "inductor"


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks (transformers marks them as checkpointable layers)."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_layers(model: torch.nn.Module) -> int:
    """Compile each decoder layer in place (its parameters and state-dict keys unchanged, so
    checkpoints are the same as eager ones); returns how many."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(backend=COMPILE_BACKEND, dynamic=True)
    return len(layers)


def uncompile_layers(model: torch.nn.Module) -> None:
    """Back to eager: ``Module.compile`` keeps the compiled forward in ``_compiled_call_impl``
    (torch has no public way to undo it)."""
    for layer in decoder_layers(model):
        layer._compiled_call_impl = None
    torch._dynamo.reset()


def compile_or_fall_back(
    model: torch.nn.Module, probe: Callable[[], torch.Tensor], device: torch.device
) -> EngineFallback | None:
    """Compile the decoder layers and prove it with ``probe`` (a forward returning a loss,
    backpropagated here; the gradients it leaves are cleared and the random generators
    restored, so training starts as it would have). None when compiled; the fallback taken
    when the model has no decoder layers or compiling failed (the layers then run eager)."""
    if not compile_layers(model):
        return EngineFallback("compile", "no_decoder_layers", type(model).__name__)
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            probe().backward()
    except torch.OutOfMemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - any compiler failure: train eager instead
        uncompile_layers(model)
        detail = " ".join(f"{type(error).__name__}: {error}".split())[:500]  # one line
        log.warning("torch.compile failed; the decoder layers run eager", extra={"detail": detail})
        return EngineFallback("compile", "compile_failed", detail)
    finally:
        model.zero_grad(set_to_none=True)
    return None
