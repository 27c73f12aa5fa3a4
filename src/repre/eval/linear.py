"""Linear probe on frozen features, trained on precomputed features (fast on CPU).

Features: the class token, the mean patch token, or both, of each of the last `eval.linear.blocks` blocks
(final norm applied, as DINO's linear evaluation), concatenated and standardized with train statistics.
lr and weight decay are chosen on a validation split carved from train; the chosen pair is retrained on
the whole train split and reported on test.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from repre.config import Config
from repre.core.runtime import Runtime
from repre.data.evaluation import eval_loader
from repre.errors import UserError
from repre.eval.features import frozen_outputs
from repre.eval.probe import fit_probe
from repre.models.backbone import Backbone


def block_features(
    encoder: Backbone, loader: DataLoader, rt: Runtime, kind: str, blocks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (features [N, blocks * D * (2 if kind == "both" else 1)] float32 on CPU, labels [N])."""
    model = encoder.model
    if kind in ("cls", "both") and not getattr(model, "num_prefix_tokens", 0):
        raise UserError(f"{encoder.arch} has no class token: use eval.linear.features=avg")
    if not 1 <= blocks <= encoder.depth:
        raise UserError(f"eval.linear.blocks must be in 1..{encoder.depth}, got {blocks}")

    def features(x: torch.Tensor) -> torch.Tensor:
        if encoder.hierarchical:  # Swin: the mean of the last `blocks` stages' maps (no class token)
            maps = model.forward_intermediates(x, indices=blocks, norm=True, output_fmt="NCHW",
                                               intermediates_only=True)
            return torch.cat([m.float().mean(dim=(2, 3)) for m in maps], dim=1)
        outs = model.forward_intermediates(x, indices=blocks, norm=True, output_fmt="NLC",
                                           return_prefix_tokens=kind != "avg", intermediates_only=True)
        parts = []
        for out in outs:
            tokens, prefix = out if isinstance(out, tuple) else (out, None)
            if kind in ("cls", "both"):
                parts.append(prefix[:, 0])
            if kind in ("avg", "both"):
                parts.append(tokens.mean(dim=1))
        return torch.cat(parts, dim=1)

    return frozen_outputs(encoder, loader, rt, features)


def train_linear(
    x: torch.Tensor, y: torch.Tensor, classes: int, lr: float, wd: float, epochs: int, seed: int = 0
) -> torch.nn.Linear:
    """AdamW + cosine on standardized features x [N, F] -> a linear classifier [F -> classes]."""
    head = torch.nn.Linear(x.shape[1], classes)
    return fit_probe(head, x, y, F.cross_entropy, lr, wd, epochs, batch=1024, seed=seed)


@torch.no_grad()
def top1(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((head(x).argmax(dim=1) == y).float().mean())


def linear_eval(encoder: Backbone, cfg: Config, rt: Runtime) -> dict[str, Any]:
    """Sweep lr x weight decay on a validation split of train; report the chosen probe's test top-1."""
    e = cfg.eval
    train, test = eval_loader(cfg, "train", e.linear.train_subset), eval_loader(cfg, "test", e.linear.test_subset)
    classes = train.dataset.source.num_classes
    if not classes:
        raise UserError("the linear probe needs labels: use a folder with class sub-folders in train/ and val/")
    xtr, ytr = block_features(encoder, train, rt, e.linear.features, e.linear.blocks)
    xte, yte = block_features(encoder, test, rt, e.linear.features, e.linear.blocks)
    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(cfg.train.seed))
    n_val = max(1, int(e.linear.val_fraction * len(xtr)))
    fit, val = perm[n_val:], perm[:n_val]
    mean, std = xtr[fit].mean(dim=0), xtr[fit].std(dim=0) + 1e-6
    sweep = []
    for lr in e.linear.lrs:
        for wd in e.linear.wds:
            head = train_linear((xtr[fit] - mean) / std, ytr[fit], classes, lr, wd, e.linear.epochs, cfg.train.seed)
            sweep.append({"lr": lr, "weight_decay": wd, "val_top1": top1(head, (xtr[val] - mean) / std, ytr[val])})
    best = max(sweep, key=lambda r: r["val_top1"])
    mean, std = xtr.mean(dim=0), xtr.std(dim=0) + 1e-6
    head = train_linear((xtr - mean) / std, ytr, classes, best["lr"], best["weight_decay"], e.linear.epochs, cfg.train.seed)
    extra = {"val_top1": best["val_top1"], "lr": best["lr"], "weight_decay": best["weight_decay"],
             "features": e.linear.features, "blocks": e.linear.blocks, "dim": xtr.shape[1], "sweep": sweep}
    return {"task": "linear", "metric": "top1", "value": top1(head, (xte - mean) / std, yte), "extra": extra}
