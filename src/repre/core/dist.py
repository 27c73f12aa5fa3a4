"""Small distributed helpers; each is the identity (or a no-op) in a single process.

A run is distributed when a launcher (torchrun) set WORLD_SIZE > 1: `init_from_env` then joins the process
group (NCCL on GPUs, gloo on CPU) and picks this process's device (cuda:LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from repre.core.launch import launched, launched_world_size, local_rank
from repre.errors import UserError

log = logging.getLogger("repre")

# generous: rank 0 alone runs the k-NN evaluations and writes checkpoints while the others wait in a collective
TIMEOUT = datetime.timedelta(minutes=60)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process logs, draws and writes files (rank 0, or the only process)."""
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group a launcher described (MASTER_ADDR, RANK, WORLD_SIZE, LOCAL_RANK) when `launched()`.

    `device`: the device the config resolved to; a CUDA device becomes cuda:LOCAL_RANK with NCCL, anything else
    uses gloo. Returns this process's device. A no-op in a single process or when already initialised.
    """
    if not launched() or is_distributed():
        return torch.device(f"cuda:{local_rank()}") if device.type == "cuda" and is_distributed() else device
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={launched_world_size()} is set but {', '.join(missing)} are not: start the "
                        "processes with torchrun (torchrun --nproc_per_node N -m repre pretrain ...), or unset "
                        "WORLD_SIZE for one process")
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise UserError(f"this process has LOCAL_RANK={local_rank()} but the machine shows "
                            f"{torch.cuda.device_count()} GPU(s): start one process per GPU (torchrun "
                            f"--nproc_per_node {torch.cuda.device_count()}), check CUDA_VISIBLE_DEVICES, or train "
                            "on the CPU with --set train.device=cpu")
        device = torch.device(f"cuda:{local_rank()}")
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    # torchrun --max-restarts starts every process again against the store of the attempt before, which still
    # holds that attempt's addresses: the restarted processes waited on them (gloo: hung, or "connectFullMesh
    # failed"). Each attempt keeps its keys under a prefix of its own.
    store, rank_, world = next(dist.rendezvous("env://", timeout=TIMEOUT))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend, store=dist.PrefixStore(f"repre/attempt-{attempt}", store), rank=rank_,
                            world_size=world, timeout=TIMEOUT)
    if is_main():
        n = world_size()
        log.info("distributed: %d process%s (%s)", n, "es" if n > 1 else "", backend)
    return device


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


@contextlib.contextmanager
def group_scope() -> Iterator[None]:
    """A block in which torchrun's process group is joined (by `init_from_env`, called inside it by whoever
    sets up the run) and that leaves the group when it ends, unless the group was joined before the block.
    Outside torchrun a no-op."""
    joins = launched() and not is_distributed()
    try:
        yield
    finally:
        if joins:
            shutdown()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """[N, ...] on each process -> [N * world, ...] in rank order (no gradient, as MoCo's key gathering)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class _AllGather(torch.autograd.Function):
    """x [*] on each process -> [world, *] in rank order; the gradient of x is the sum over processes of the
    gradient of its slot. Backward uses all_reduce (gloo has no reduce_scatter): fine for small tensors."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce autograd's buffer in place
        dist.all_reduce(grad)
        return grad[rank()]


def all_gather_grad(x: torch.Tensor) -> torch.Tensor:
    """x [*] on each process -> [world, *] in rank order, differentiable (`gather` is not): the gradient also
    flows into the other processes' x (SyncBatchNorm's statistics). Distributed only."""
    return _AllGather.apply(x)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over all processes (a new tensor; `x` itself in a single process). No gradient flows
    through it under torchrun (a single process returns `x`, with its graph): for statistics, not for a loss
    (a loss over the global batch gathers with `all_gather_grad`)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """The maximum of `x` over all processes (a new tensor; `x` itself in a single process)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every process ([obj] in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out

