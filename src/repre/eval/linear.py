"""`repre eval linear`: the linear probe on a frozen encoder, by the protocol eval.linear.protocol names
(`repre.eval.protocols`); this module runs the quick one and hands the papers' to `repre.eval.lincls`.

The quick CPU protocol (repre's, not a paper's): features of the last `eval.linear.blocks` blocks
(`repre.eval.tokens`), precomputed once without augmentation and standardized with train statistics; lr and
weight decay chosen on a validation split carved from train; the chosen pair retrained on the whole train
split and reported on test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from repre.config import Config
from repre.core import dist
from repre.core.runtime import Runtime
from repre.data.evaluation import eval_loader
from repre.data.labels import check_labels, check_source_labels, class_names, labelled
from repre.errors import UserError
from repre.eval.features import bar_name, frozen_outputs
from repre.eval.lincls import lincls_eval
from repre.eval.probe import fit_probe
from repre.eval.protocols import LinearProtocol, resolve
from repre.eval.scores import per_class, top1
from repre.eval.tokens import check_layout, token_features
from repre.models.backbone import Backbone

log = logging.getLogger("repre")

SMALL_HOLD_OUT = 50  # held-out images below which the sweep's choice is said to be mostly chance


def block_features(
    encoder: Backbone, loader: DataLoader, rt: Runtime, kind: str, blocks: int, desc: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (features [N, blocks * D * (2 if kind == "both" else 1)] float32 on CPU, labels [N]); `desc`: a
    progress bar's name."""
    check_layout(encoder, kind, blocks)
    features, labels = frozen_outputs(encoder, loader, rt, lambda x: token_features(encoder, x, kind, blocks), desc)
    assert labels is not None  # an `eval_loader`'s batches hold labels
    return features, labels


def train_linear(
    x: torch.Tensor, y: torch.Tensor, classes: int, lr: float, wd: float, epochs: int, seed: int = 0,
    batch: int = 1024,
) -> torch.nn.Linear:
    """AdamW + cosine on standardized features x [N, F] -> a linear classifier [F -> classes]. Its initial
    weights (PyTorch's default draw) come from `seed`: every cell of the sweep and the retrained head start from
    the same head, so the sweep compares the settings alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(x.shape[1], classes)
    return fit_probe(head, x, y, F.cross_entropy, lr, wd, epochs, batch=batch, seed=seed)


def standardizer(x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Features x [N, F] -> the map that standardizes features [M, F] by x's per-feature mean and std."""
    mean, std = x.mean(dim=0), x.std(dim=0) + 1e-6
    return lambda features: (features - mean) / std


@torch.no_grad()
def head_top1(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return top1(head(x).argmax(dim=1), y)


def linear_eval(encoder: Backbone, cfg: Config, rt: Runtime, out: Path | None = None) -> dict[str, Any]:
    """The probe of eval.linear.protocol: quick here; mocov3, dino and moby train in `repre.eval.lincls`, with a
    resumable checkpoint in `out` (None: none)."""
    protocol = resolve(cfg.eval.linear, encoder)
    if protocol.name == "quick":
        return quick_eval(encoder, cfg, rt, protocol)
    return lincls_eval(encoder, cfg, rt, protocol, out)


def sweep(xtr: torch.Tensor, ytr: torch.Tensor, classes: int, cfg: Config, protocol: LinearProtocol) -> list[dict]:
    """Each lr x weight decay of eval.linear, trained on train features [N, F] less a held-out part, scored
    on that part -> [{"lr", "weight_decay", "val_top1"}, ...]."""
    e, seed = cfg.eval.linear, cfg.train.seed
    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(e.val_fraction * len(xtr)))
    if len(xtr) - n_val < 2:  # a feature's std over one image is NaN: every prediction would be class 0
        raise UserError(f"the quick linear probe has {len(xtr)} training image(s): too few to hold "
                        f"{n_val} out (eval.linear.val_fraction={e.val_fraction}) and fit on the rest; give it "
                        "more images (a larger eval.linear.train_subset, or none) or a smaller "
                        "eval.linear.val_fraction")
    if n_val < SMALL_HOLD_OUT and len(e.lrs) * len(e.wds) > 1 and dist.is_main():  # each process fits alike
        log.warning("the quick linear probe chooses its lr and weight decay on %d held-out image(s): a choice by "
                    "chance; give it more images or fewer values in eval.linear.lrs and wds", n_val)
    fit, val = perm[n_val:], perm[:n_val]
    standard = standardizer(xtr[fit])
    rows = []
    for lr in e.lrs:
        for wd in e.wds:
            head = train_linear(standard(xtr[fit]), ytr[fit], classes, lr, wd, protocol.epochs, seed,
                                protocol.batch_size)
            rows.append({"lr": lr, "weight_decay": wd, "val_top1": head_top1(head, standard(xtr[val]), ytr[val])})
    return rows


def quick_eval(encoder: Backbone, cfg: Config, rt: Runtime, protocol: LinearProtocol) -> dict[str, Any]:
    """The quick CPU protocol: sweep lr x weight decay on a validation split of train; report the chosen
    probe's test top-1."""
    e = cfg.eval.linear
    train, test = eval_loader(cfg, "train", e.train_subset), eval_loader(cfg, "test", e.test_subset)
    classes = labelled(train.dataset.source, "the linear probe")
    check_source_labels(train.dataset.source, classes, "the linear probe", "training images")
    check_source_labels(test.dataset.source, classes, "the linear probe", "held-out images")
    xtr, ytr = block_features(encoder, train, rt, protocol.features, protocol.blocks, bar_name(cfg, "probe train"))
    xte, yte = block_features(encoder, test, rt, protocol.features, protocol.blocks, bar_name(cfg, "probe test"))
    check_labels(ytr, classes, "the linear probe", "training images")
    check_labels(yte, classes, "the linear probe", "held-out images")
    rows = sweep(xtr, ytr, classes, cfg, protocol)
    best = max(rows, key=lambda r: r["val_top1"])
    for key, grid in (("lr", e.lrs), ("weight_decay", e.wds)):
        if len(grid) > 1 and best[key] in (min(grid), max(grid)) and best[key] != 0:
            log.info("the linear probe chose %s %g, at the edge of its grid %s: a value beyond it may score "
                     "higher (eval.linear.%s)", key, best[key], list(grid), "lrs" if key == "lr" else "wds")
    standard = standardizer(xtr)
    head = train_linear(standard(xtr), ytr, classes, best["lr"], best["weight_decay"], protocol.epochs,
                        cfg.train.seed, protocol.batch_size)
    with torch.no_grad():
        pred = head(standard(xte)).argmax(dim=1)
    extra = {**protocol.summary(), "val_top1": best["val_top1"], "lr": best["lr"],
             "weight_decay": best["weight_decay"], "dim": xtr.shape[1], "sweep": rows,
             **per_class(pred, yte, classes, class_names(test.dataset.source))}
    return {"task": "linear", "metric": "top1", "value": top1(pred, yte), "extra": extra}
