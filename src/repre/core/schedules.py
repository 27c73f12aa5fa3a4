"""Schedules precomputed per optimizer step (as DINO): index with the 0-based step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from repre.config import MAX_STEPS, Config, TrainConfig
from repre.errors import UserError


def warmup_cosine(base: float, final: float, total: int, warmup: int = 0, start: float = 0.0,
                  whole_run: bool = False) -> torch.Tensor:
    """[total] values: linear from `start` to `base` over `warmup` steps, then half-cosine from `base` to `final`.

    Step i of the warmup has start + (base - start) * i / warmup (MoCo v3's per-iteration rule with start 0;
    timm's CosineLRScheduler with warmup_lr_init=start, as MoBY); the cosine part is
    final + (base - final) * 0.5 * (1 + cos(pi * (i - warmup) / (total - warmup))) (MoCo v3, DINO), or with
    `whole_run` final + (base - final) * 0.5 * (1 + cos(pi * i / total)): the cosine over the whole run, the
    warm-up joining it where it stands (timm's CosineLRScheduler without warmup_prefix, as MoBY runs it).
    """
    warmup = min(warmup, total)
    steps = torch.arange(total, dtype=torch.float64)
    warm = start + (base - start) * steps[:warmup] / max(warmup, 1)
    t = steps[warmup:] / total if whole_run else (steps[warmup:] - warmup) / max(total - warmup, 1)
    cos = final + (base - final) * 0.5 * (1 + torch.cos(math.pi * t))
    return torch.cat([warm, cos])


def momentum_schedule(base: float, total: int) -> torch.Tensor:
    """MoCo v3's momentum: 1 - 0.5 * (1 + cos(pi * i / total)) * (1 - base), rising from `base` to 1."""
    steps = torch.arange(total, dtype=torch.float64)
    return 1 - 0.5 * (1 + torch.cos(math.pi * steps / total)) * (1 - base)


def total_steps(train: TrainConfig, dataset_size: int) -> int:
    """The optimizer steps of a run: train.max_steps, or train.epochs over `dataset_size` images in full
    batches (the last partial batch of an epoch dropped)."""
    if train.max_steps > 0:
        return train.max_steps
    total = train.epochs * (dataset_size // train.batch_size)
    if total > MAX_STEPS:
        raise UserError(f"train.epochs={train.epochs} of {dataset_size:,} images in batches of {train.batch_size} "
                        f"is {total:,} steps, more than the {MAX_STEPS:,} a run may take: set fewer epochs")
    return total


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017, as MoCo v3, DINO and MAE apply it): lr = base_lr x batch / 256."""
    return base_lr * batch_size / 256


@dataclass(frozen=True)
class RunSchedules:
    """Every per-step value of a pre-training run, precomputed: index with the 0-based optimizer step."""

    lr: torch.Tensor  # [total]
    momentum: torch.Tensor  # [total] the EMA momentum of the momentum / teacher encoder
    ema: bool  # whether the method has one (else the train lines leave the momentum out)
    weight_decay: torch.Tensor | None  # [total] when train.weight_decay_end is set

    @classmethod
    def build(cls, cfg: Config, total: int, ema: bool = True) -> RunSchedules:
        t = cfg.train
        warmup = round(t.warmup_fraction * total)
        return cls(
            lr=warmup_cosine(scaled_lr(t.lr, t.batch_size), t.min_lr, total, warmup, t.warmup_lr,
                             whole_run=t.cosine_span == "whole_run"),
            momentum=momentum_schedule(cfg.method.momentum, total),
            ema=ema,
            weight_decay=(warmup_cosine(t.weight_decay, t.weight_decay_end, total)
                          if t.weight_decay_end is not None else None),
        )

    def logged(self, step: int) -> dict[str, torch.Tensor]:
        """The values of `step` that a train line reports."""
        values = {"lr": self.lr[step], **({"momentum": self.momentum[step]} if self.ema else {})}
        if self.weight_decay is not None:
            values["weight_decay"] = self.weight_decay[step]
        return values
