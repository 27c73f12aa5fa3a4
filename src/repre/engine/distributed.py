"""Small, pure distributed helpers; each is the identity in a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launched_world_size() -> int:
    """The process count a launcher such as torchrun asked for (WORLD_SIZE), read when called."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """[N, ...] on each process -> [N * world, ...] in rank order (no gradient, as MoCo's key gathering)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over all processes (a new tensor; `x` itself in a single process)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x
