"""Data-parallel plumbing: process-group set-up from torchrun's environment, and a deterministic,
resumable batch order sharded across ranks.

World size 1 (no WORLD_SIZE in the environment) runs without torchrun or a process group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when init_distributed created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    NCCL on CUDA, gloo on CPU. A group that already exists (the caller made it) is used as is.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, owns)


def close_distributed(info: DistInfo) -> None:
    """Leave the group if init_distributed made it. No barrier: it would hang when another rank failed."""
    if info.owns_group:
        dist.destroy_process_group()


def all_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over ranks (identity at world size 1)."""
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x)
        x /= info.world_size
    return x


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's dataset indices for steps start_step, start_step + 1, ..., end_step - 1.

    The order is a pure function of (seed, epoch): epoch e is a permutation drawn from a generator seeded
    with (seed, e), cut into global batches of `batch_size` (the incomplete tail is dropped, so every step
    sees a full batch), and rank r takes the r-th contiguous slice of each global batch. Restoring the
    step is therefore all a resume needs; DataLoader worker RNG plays no part.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, end_step: int, info: DistInfo = DistInfo()):
        if batch_size % info.world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the world size {info.world_size}")
        if n < batch_size:
            raise ValueError(f"the dataset has {n} images, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.end_step, self.info = start_step, end_step, info
        self.steps_per_epoch = n // batch_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)  # (seed, epoch) -> one stream
        return torch.randperm(self.n, generator=g)  # (n,)

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.info.world_size
        epoch, order = None, None
        for step in range(self.start_step, self.end_step):
            e, pos = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, self.epoch_order(e)
            start = pos * self.batch_size + self.info.rank * per_rank
            yield order[start : start + per_rank].tolist()

    def __len__(self) -> int:
        return max(self.end_step - self.start_step, 0)
