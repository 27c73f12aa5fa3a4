"""Training a small probe (linear head, 1x1 conv) on precomputed frozen features."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

Probe = TypeVar("Probe", bound=nn.Module)


def fit_probe(
    probe: Probe,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lr: float,
    weight_decay: float,
    epochs: int,
    batch: int,
    seed: int = 0,
) -> Probe:
    """Mini-batch AdamW with a cosine lr over `epochs` passes of (x, y); minimises loss_fn(probe(x_b), y_b)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * math.ceil(len(x) / batch)))
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            loss = loss_fn(probe(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return probe
