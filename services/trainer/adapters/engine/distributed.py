"""Data-parallel training of one job across processes, on PyTorch distributed (imports torch).

One job may run as ``N`` ranks started by ``torchrun`` (see :mod:`.ranks`): every rank holds
the whole model with its adapter, reads the same data and draws the same steps (the sampler is
seeded, so every rank computes the same step groups and micro-batches); each rank then takes
its share of the step's micro-batches, balanced by tokens, and the ranks sum their gradients
before the optimizer steps. The optimizer state stays identical on every rank, so rank 0 alone
writes checkpoints and reports, and a checkpoint resumes on any number of ranks.

Why one all-reduce of the flattened trainable gradients per step rather than wrapping the
model in ``DistributedDataParallel``: DDP synchronises inside ``backward`` and needs every
rank to run the same number of backward passes; a step with fewer micro-batches than ranks (or
a rank whose share is empty) would hang it, and ``no_sync`` on every micro-batch but the last
ends in the same single reduction this does. The trainable parameters of a LoRA-family
adapter are small, so one bucket is the whole exchange.

Decisions a rank cannot take alone are agreed at step boundaries: rank 0 holds the control
channel (cancel, halt, budget) and the clock, and broadcasts what it decided
(:meth:`DataParallelGroup.decide`).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

#: How long a collective waits for a missing rank before the group fails (a rank that died
#: ends the whole launch through torchrun long before this).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DataParallelGroup:
    """This process's place among the ranks training one job (``world_size`` 1: alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: The frozen base weights sharded across the ranks (FSDP2, see :mod:`.sharding`) rather
    #: than whole on each: every forward is then a collective (see :meth:`passes_short`).
    fully_sharded: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that reports, writes checkpoints and hears the control channel."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(
        cls, device_type: str, *, fully_sharded: bool = False
    ) -> DataParallelGroup:
        """Join the group ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
        ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL on CUDA, gloo on the CPU."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        group = cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=world_size,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            fully_sharded=fully_sharded and world_size > 1,
        )
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if device_type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT
            )
        return group

    def device_of(self, slot: str) -> str:
        """This rank's device in a job's device slot (``cuda:0,cuda:1``: rank ``r`` the
        ``r``-th; ``cpu``: every rank on the CPU)."""
        devices = [device.strip() for device in slot.split(",") if device.strip()]
        return devices[self.local_rank % len(devices)]

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    # -- the step's work ----------------------------------------------------------------------

    def share(self, batches: Sequence[list[int]], lengths: Sequence[int]) -> list[list[int]]:
        """This rank's micro-batches of one step: the heaviest batches first, each to the rank
        with the fewest tokens so far (ties to the lowest rank), kept in the step's order. Every
        rank computes the same assignment from the same inputs."""
        if not self.distributed:
            return list(batches)
        owner = self._owners(batches, lengths)
        return [batch for index, batch in enumerate(batches) if owner[index] == self.rank]

    def _owners(self, batches: Sequence[list[int]], lengths: Sequence[int]) -> list[int]:
        """The rank of each of the step's micro-batches (see :meth:`share`)."""
        load = [(0, rank) for rank in range(self.world_size)]
        owner = [0] * len(batches)
        by_weight = sorted(
            range(len(batches)), key=lambda b: (-sum(lengths[i] for i in batches[b]), b)
        )
        for index in by_weight:
            tokens, rank = heapq.heappop(load)
            owner[index] = rank
            heapq.heappush(load, (tokens + sum(lengths[i] for i in batches[index]), rank))
        return owner

    def passes_short(self, batches: Sequence[list[int]], lengths: Sequence[int]) -> int:
        """Fully sharded: how many passes this rank's share of a step is short of the busiest
        rank's, to make up with passes whose loss counts zero (every forward gathers weights
        from all ranks, so all must run as many). 0 when the weights are not sharded."""
        if not self.fully_sharded:
            return 0
        counts = [0] * self.world_size
        for rank in self._owners(batches, lengths):
            counts[rank] += 1
        return max(counts) - counts[self.rank]

    def shard_passes_short(self, count: int) -> int:
        """:meth:`passes_short` for :meth:`shard`'s pieces of ``count``."""
        if not self.fully_sharded:
            return 0
        return -(-count // self.world_size) - len(self.shard(count))

    def shard(self, count: int) -> range:
        """The indices of ``count`` equal pieces of work (validation batches) this rank takes."""
        return range(self.rank, count, self.world_size)

    # -- collectives --------------------------------------------------------------------------

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place; the same tensor back)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum the trainable parameters' gradients over the ranks, in one bucket. A rank with no
        gradient for a parameter (it had no micro-batch this step) contributes zeros."""
        if not self.distributed:
            return
        trainable = [p for p in parameters if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trainable]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for parameter, reduced in zip(
            trainable, _unflatten_dense_tensors(flat, grads), strict=True
        ):
            parameter.grad = reduced

    def copy_from_main(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Start every rank from rank 0's trainable weights (what DDP does at construction)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for parameter in parameters:
                if parameter.requires_grad:
                    dist.broadcast(parameter.data, src=0)

    def decide(self, value: int, device: torch.device) -> int:
        """Rank 0's ``value`` on every rank: decisions only rank 0 can take (it hears cancel,
        halt and budget, and keeps the clock) taken once, at a step boundary."""
        if not self.distributed:
            return value
        decided = torch.tensor([value], dtype=torch.int64, device=device)
        dist.broadcast(decided, src=0)
        return int(decided.item())


SOLO = DataParallelGroup()
