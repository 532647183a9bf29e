"""The torchrun process group, for training and evaluation alike: WORLD_SIZE / RANK /
LOCAL_RANK from the environment, gloo on CPU and nccl on CUDA; a no-op in a plain process."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


class Distributed:
    """This process's place in a torchrun world. Starts the process group when the
    environment names a world of several processes and none is running yet; `close()`
    ends only a group it started."""

    def __init__(self, device: str = "cpu"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.owns_group = False
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """`name`, with a CUDA device per local rank in a distributed run."""
        if name.startswith("cuda") and self.enabled:
            return torch.device("cuda", self.local_rank)
        return torch.device(name)

    def all_mean(self, x: float) -> float:
        """The mean of `x` over the ranks (float64 on the wire)."""
        if not self.enabled:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def gather(self, part: Any) -> list[Any] | None:
        """Every rank's `part` on rank 0 in rank order (None on the others)."""
        if not self.enabled:
            return [part]
        parts = [None] * self.world if self.main else None
        dist.gather_object(part, parts, dst=0)
        return parts

    def barrier(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
