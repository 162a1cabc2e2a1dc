"""Data-parallel training on torch.distributed, as ``torchrun`` starts it.

``torchrun --nproc_per_node N -m ddcolor finetune ...`` sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; each process then trains on its
share of every batch (DDP averages the gradients, so N processes step exactly
as one would on the whole batch), and only rank 0 writes files and talks.
Without those variables this is one process and every call is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # we started the process group, so we end it
    reduce_device: torch.device = torch.device("cpu")  # where tensors to reduce live (NCCL: the GPU)

    @classmethod
    def from_environment(cls, device: torch.device) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        nccl = dist.get_backend() == "nccl"
        return cls(rank, world, local_rank, owned, torch.device("cuda", local_rank) if nccl else torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self, device: torch.device) -> torch.device:
        """Each process its own GPU (its LOCAL_RANK) when training on CUDA."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def share(self, batch: int) -> slice:
        """This process's part of a batch of ``batch`` (which the world size divides)."""
        part = batch // self.world
        return slice(self.rank * part, (self.rank + 1) * part)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.active:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world
        return values

    def any(self, flag: bool) -> bool:
        """Whether any process says so: a stop request reaches them at slightly different times."""
        if not self.active:
            return flag
        value = torch.tensor([float(flag)], device=self.reduce_device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
