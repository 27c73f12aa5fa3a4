"""SyncBatchNorm in 2 gloo processes equals BatchNorm1d over the concatenated batch: output, input gradient,
parameter gradients and running statistics."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from repre.models.sync_bn import SyncBatchNorm, convert_sync_batchnorm


def reference(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
    bn = nn.BatchNorm1d(x.shape[1])
    bn.weight.data.copy_(weight)
    x = x.clone().requires_grad_(True)
    y = bn(x)
    y.backward(grad_out)
    return {"y": y.detach(), "gx": x.grad, "gw": bn.weight.grad, "gb": bn.bias.grad,
            "mean": bn.running_mean, "var": bn.running_var}


def worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    x, weight, grad_out = torch.randn(8, 5) * 3 + 1, torch.rand(5) + 0.5, torch.randn(8, 5)
    model = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(5)))
    assert isinstance(model[0], SyncBatchNorm)
    model[0].weight.data.copy_(weight)
    share = slice(rank * 4, rank * 4 + 4)
    xs = x[share].clone().requires_grad_(True)
    y = model(xs)
    y.backward(grad_out[share])
    # DDP averages parameter gradients over processes; the reference sums over the whole batch: x world
    gw, gb = model[0].weight.grad.clone(), model[0].bias.grad.clone()
    dist.all_reduce(gw), dist.all_reduce(gb)
    out = {"y": y.detach(), "gx": xs.grad, "gw": gw, "gb": gb, "mean": model[0].running_mean,
           "var": model[0].running_var}
    # NumPy copies travel by value; torch would pass tensors as file descriptors that the parent can only open
    # while this process is alive, a race with its exit
    queue.put((rank, {k: v.detach().numpy().copy() for k, v in out.items()}))
    dist.destroy_process_group()


def test_sync_batchnorm_equals_batchnorm_over_the_global_batch():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {rank: {k: torch.from_numpy(v) for k, v in out.items()}
               for rank, out in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
    torch.manual_seed(0)
    x, weight, grad_out = torch.randn(8, 5) * 3 + 1, torch.rand(5) + 0.5, torch.randn(8, 5)
    ref = reference(x, weight, grad_out)
    for key in ("y", "gx"):
        torch.testing.assert_close(torch.cat([results[0][key], results[1][key]]), ref[key], rtol=1e-5, atol=1e-5)
    for key in ("gw", "gb", "mean", "var"):
        for r in (0, 1):
            torch.testing.assert_close(results[r][key], ref[key], rtol=1e-5, atol=1e-5, msg=f"{key} rank {r}")


def test_single_process_and_eval_mode_are_plain_batchnorm():
    torch.manual_seed(0)
    plain = nn.BatchNorm1d(4)
    synced = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(4)))[0]
    x = torch.randn(6, 4)
    torch.testing.assert_close(synced(x), plain(x))
    plain.eval(), synced.eval()
    torch.testing.assert_close(synced(x), plain(x))
    assert set(synced.state_dict()) == set(plain.state_dict())  # checkpoints load either way
