"""Fully sharded training of one job (FSDP2, ``fully_shard`` per decoder layer; imports torch).

For base models that do not fit one device: the frozen base weights are split across the
ranks, each decoder layer one unit that is gathered for its forward and backward and freed
after. The adapter's trainable parameters are *not* sharded (``ignored_params``): they are a
small fraction of the model, so every rank keeps them whole, trains them like the
data-parallel path does (one all-reduce of their gradients per step, see
:mod:`.distributed`), and rank 0 writes the adapter and the optimizer state exactly as a single
process would. That keeps checkpoints in one format, so a job resumes on any number of ranks and
in either mode, and it keeps the frozen units in one dtype (FSDP2 gathers a unit's parameters in
one buffer: bf16 base weights and fp32 adapter weights cannot share one).

What sharding costs the loop: every forward is a collective, so every rank must run the same
number of forward (and backward) passes per step and per validation; a rank with fewer
micro-batches makes up the difference with passes whose loss counts zero
(:meth:`.distributed.DataParallelGroup.passes_short`).
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from services.trainer.adapters.engine.compilation import decoder_layers


def shard_frozen_weights(model: torch.nn.Module, device: torch.device, world_size: int) -> None:
    """Shard ``model``'s frozen weights across the ``world_size`` ranks (one FSDP2 unit per
    decoder layer, the rest in the root unit) onto ``device``; the trainable parameters stay
    whole on every rank, moved to ``device``. The process group must be up."""
    if device.type == "cuda":  # FSDP gathers on the current device: this rank's, not cuda:0
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (world_size,))
    trainable = {p for p in model.parameters() if p.requires_grad}
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, ignored_params=trainable)
    # the root too gives its weights back after each forward (FSDP keeps them by default, for
    # the backward): a validation forward has no backward, and rank 0 then reads the state dict
    # for the checkpoint, which reshards on rank 0 alone; the ranks' next gathers would differ
    fully_shard(model, mesh=mesh, ignored_params=trainable, reshard_after_forward=True)
    with torch.no_grad():
        for parameter in trainable:  # FSDP moves what it shards, not what it ignores
            parameter.data = parameter.data.to(device)
