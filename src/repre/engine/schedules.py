"""Schedules precomputed per optimizer step (as DINO): index with the 0-based step."""

from __future__ import annotations

import math

import torch


def warmup_cosine(base: float, final: float, total: int, warmup: int = 0) -> torch.Tensor:
    """[total] values: linear from 0 to `base` over `warmup` steps, then half-cosine from `base` to `final`.

    Step i of the warmup has base * i / warmup (MoCo v3's per-iteration rule); the cosine part is
    final + (base - final) * 0.5 * (1 + cos(pi * (i - warmup) / (total - warmup))).
    """
    warmup = min(warmup, total)
    steps = torch.arange(total, dtype=torch.float64)
    warm = base * steps[:warmup] / max(warmup, 1)
    t = (steps[warmup:] - warmup) / max(total - warmup, 1)
    cos = final + (base - final) * 0.5 * (1 + torch.cos(math.pi * t))
    return torch.cat([warm, cos])


def momentum_schedule(base: float, total: int) -> torch.Tensor:
    """MoCo v3's momentum: 1 - 0.5 * (1 + cos(pi * i / total)) * (1 - base), rising from `base` to 1."""
    steps = torch.arange(total, dtype=torch.float64)
    return 1 - 0.5 * (1 + torch.cos(math.pi * steps / total)) * (1 - base)
