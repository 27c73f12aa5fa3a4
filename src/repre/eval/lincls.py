"""The papers' linear probes (MoCo v3, DINO, MoBY): a linear head trained by SGD on random resized crops and
flips through the frozen encoder, features computed at every step (`repre.eval.protocols` holds the values).

As the official scripts: the encoder runs without gradients, in eval mode (main_lincls.py:341-348;
eval_linear.py:55,164) or, MoBY, in train mode with stochastic depth (moby_linear.py:72,189); the lr follows a
cosine over the epochs, set at the start of each epoch (main_lincls.py:499-503; eval_linear.py:109,127) or,
MoBY, at every step after a warm-up (lr_scheduler.py:20-29); a checkpoint of the head, its optimizer and the
epoch is written after each epoch and resumed from when the evaluation is run again into the same folder
(main_lincls.py:240-260; eval_linear.py:111-121). Under torchrun each process takes its share of every
global batch and the head's gradients are averaged, so N processes compute what one process computes (MoBY:
in distribution, each process drawing its own stochastic depth). Deviations: the last partial batch of an
epoch is dropped (MoBY's loader drops it too, data/build.py:51; MoCo v3's and DINO's keep it); the reported
top-1 is the final head's, not the best epoch's (main_lincls.py:315; eval_linear.py:134; moby_linear.py:181).
Test images are resized as each script resizes them (`protocols.TEST_RESIZE`), with torchvision's antialiased
resampling of tensors (within two levels of PIL's).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.data import DataLoader, Subset

from repre.config import Config, check_global_batch
from repre.core import checkpoint_io as ckpt_io
from repre.core import dist
from repre.core.rng import epoch_seed
from repre.core.runtime import Runtime
from repre.core.schedules import scaled_lr, warmup_cosine
from repre.data.evaluation import EvalLoader, eval_loader
from repre.data.labels import check_labels, check_source_labels, class_names, labelled
from repre.data.sources import ImageSource
from repre.data.splits import eval_source, subset_of
from repre.errors import UserError
from repre.eval.augmented import augmented_loader, crop_and_flip
from repre.eval.protocols import LinearProtocol
from repre.eval.scores import scores_of
from repre.eval.tokens import feature_dim, token_features
from repre.models.backbone import Backbone

log = logging.getLogger("repre")

STATE_FILE = "linear-probe.pt"  # in the evaluation's output folder
# what a probe's checkpoint records beyond its protocol since these were added (`probe_data`)
PROBE_DATA = ("data", "split", "images", "image_size", "seed", "precision")


def new_head(dim: int, classes: int, std: float, seed: int) -> nn.Linear:
    """[B, dim] -> [B, classes]: weights ~ N(0, std), bias 0, drawn from `seed` (the same on every process).
    (MoBY's head is drawn truncated at ±2: at std 0.02, 100 standard deviations, the same distribution.)"""
    head = nn.Linear(dim, classes)
    with torch.no_grad():
        head.weight.normal_(0.0, std, generator=torch.Generator().manual_seed(seed))
        head.bias.zero_()
    return head


@torch.no_grad()
def frozen_features(encoder: Backbone, x: torch.Tensor, protocol: LinearProtocol, rt: Runtime) -> torch.Tensor:
    """Normalized images x [B, 3, H, W] on the device -> float32 features [B, F] of the encoder, in the mode it
    is in."""
    with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp):
        return token_features(encoder, x, protocol.features, protocol.blocks).float()


def average_gradients(module: nn.Module) -> None:
    """Each process's gradients (of its share's mean loss) -> their mean: the gradient of the global batch."""
    world = dist.world_size()
    if world > 1:
        for p in module.parameters():
            assert p.grad is not None  # the loss's backward gave every parameter of the head one
            p.grad = dist.all_reduce_sum(p.grad) / world


def train_epoch(encoder: Backbone, head: nn.Linear, opt: torch.optim.Optimizer, loader: DataLoader,
                lrs: torch.Tensor, protocol: LinearProtocol, rt: Runtime) -> float:
    """One SGD step of the head per lr of `lrs` [steps] on `loader`'s batches -> the mean loss over them (all
    processes). The encoder runs in train mode where the protocol gives it stochastic depth."""
    encoder.train(protocol.drop_path is not None)
    total = torch.zeros((), device=rt.device)
    for lr, batch in zip(lrs.tolist(), loader, strict=False):
        check_labels(batch["label"], head.out_features, "the linear probe", "training images")
        x, y = batch["views"][:, 0].to(rt.device, non_blocking=True), batch["label"].to(rt.device)
        logits = head(frozen_features(encoder, x, protocol, rt))
        loss = F.cross_entropy(logits, y, label_smoothing=protocol.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(head)
        if protocol.clip_grad:
            nn.utils.clip_grad_norm_(head.parameters(), protocol.clip_grad)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        total += loss.detach()
    encoder.eval()
    return float(dist.all_reduce_sum(total)) / (len(lrs) * dist.world_size())


def probe_lrs(protocol: LinearProtocol, steps: int) -> torch.Tensor:
    """The lr of every step -> [epochs, steps]: a cosine from `protocol.lr` to 0 set once an epoch (MoCo v3,
    DINO); or (`lr_per_step`, MoBY) the values of timm's CosineLRScheduler stepped every step, as
    Transformer-SSL builds it (lr_scheduler.py:20-29): a linear warm-up from warmup_lr, then the cosine over all
    steps to min_lr (`warmup_cosine`'s `whole_run`)."""
    if not protocol.lr_per_step:
        return warmup_cosine(protocol.lr, 0.0, protocol.epochs)[:, None].expand(-1, steps).clone()
    batch = protocol.batch_size
    return warmup_cosine(protocol.lr, scaled_lr(protocol.min_lr, batch), protocol.epochs * steps,
                         protocol.warmup_epochs * steps, scaled_lr(protocol.warmup_lr, batch),
                         whole_run=True).view(protocol.epochs, steps)


def drop_path_seed(seed: int, epoch: int, rank: int) -> int:
    """The RNG seed of one process's stochastic depth in one epoch of a probe."""
    return epoch_seed(seed, epoch * 1_009) + rank  # epochs 1,009 apart: room for every rank between them


def with_drop_path(encoder: Backbone, rate: float) -> Backbone:
    """A copy of `encoder` with stochastic depth `rate` as timm builds it (`drop_path_rate`: rising linearly
    over the blocks, a Swin's across its stages, from 0 to `rate`): its residual branches' `drop_path*` modules
    replaced, so that an encoder of one's own (`Backbone.from_model`, whose kwargs do not rebuild it) is the
    same model with the same weights."""
    copied = copy.deepcopy(encoder)
    model: Any = copied.model  # a Swin's layers, a ViT's blocks: its timm class's own (no shared class declares them)
    blocks = [b for layer in model.layers for b in layer.blocks] if copied.hierarchical else list(model.blocks)
    for block, r in zip(blocks, torch.linspace(0, rate, len(blocks)).tolist(), strict=True):
        for name, child in list(block.named_children()):
            if name.startswith("drop_path") and isinstance(child, DropPath | nn.Identity):
                setattr(block, name, DropPath(r) if r > 0 else nn.Identity())
    return copied


@torch.no_grad()
def test_confusion(encoder: Backbone, head: nn.Linear, cfg: Config, protocol: LinearProtocol,
                   rt: Runtime) -> torch.Tensor:
    """The head's counts on the test split, [true][predicted] (classes x classes, on the CPU), each process
    scoring every world-th image; top-1 is their trace over their sum."""
    full = eval_loader(cfg, "test", cfg.eval.linear.test_subset, protocol.test_resize)
    shard = Subset(full.dataset, range(dist.rank(), len(full.dataset), dist.world_size()))
    classes = head.out_features
    counts = torch.zeros(classes * classes, dtype=torch.int64, device=rt.device)
    labels = []  # checked once every process has scored its share (one process alone raising would hang the rest)
    for x, y in EvalLoader(shard, batch_size=full.batch_size, num_workers=full.num_workers,
                           collate_fn=full.collate_fn):
        if not len(x):
            continue
        labels.append(y)
        logits = head(frozen_features(encoder, x.to(rt.device, non_blocking=True), protocol, rt))
        known = (y >= 0) & (y < classes)
        counts += torch.bincount((y[known].to(rt.device) * classes + logits.argmax(dim=1)[known.to(rt.device)]),
                                 minlength=classes * classes)
    seen = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    unknown = [label for part in dist.gather_objects(seen[(seen < 0) | (seen >= classes)].tolist()) for label in part]
    check_labels(torch.tensor(unknown, dtype=torch.int64), classes, "the linear probe", "held-out images")
    confusion = dist.all_reduce_sum(counts).view(classes, classes).cpu()
    if not confusion.sum():
        raise UserError("no test image of the linear probe could be read (each is named in a warning above)")
    return confusion


def encoder_digest(encoder: Backbone) -> str:
    """SHA-256 of the encoder's weights: a resumed probe must be of the same encoder."""
    h = hashlib.sha256()
    for name, t in encoder.model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


TEST_ONLY = ("test_resize",)  # protocol fields of its scoring alone: a head trained before a change goes on


def resume(path: Path | None, head: nn.Linear, opt: torch.optim.Optimizer,
           key: dict[str, Any]) -> tuple[int, float | None]:
    """Load a probe checkpoint of the same settings (`key`) into head and optimizer -> the epochs it has done
    and its last epoch's train loss ((0, None) without one). Under torchrun rank 0's view decides whether there
    is one, and a process that cannot read it stops every process (one going on from another epoch would wait
    in a collective for good)."""
    if not dist.gather_objects(path is not None and path.is_file())[0]:
        return 0, None
    assert path is not None
    state, why = ckpt_io.load_everywhere(path, "the linear probe's checkpoint", path.parent)
    if state is None:
        raise UserError(why)
    # a probe written before a protocol field existed had that field's default
    stored = {**{f.name: f.default for f in dataclasses.fields(LinearProtocol)
                 if f.default is not dataclasses.MISSING and f.name not in TEST_ONLY},
              **{k: key[k] for k in PROBE_DATA},  # a probe written before they were recorded: as they are now
              **state.get("probe", {})}
    if stored != key:
        changed = sorted(k for k in key.keys() | stored.keys() if key.get(k) != stored.get(k))
        raise UserError(f"{path} holds a linear probe of other settings or of another encoder (differing: "
                        f"{', '.join(changed)}); give another --out, or delete it to start again")
    head.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    log.info("resuming the linear probe from %s (epoch %d of %d)", path, state["epoch"], key["epochs"])
    return state["epoch"], state.get("loss")


def probe_data(cfg: Config, rt: Runtime, images: int) -> dict[str, Any]:
    """What the probe trains on and how, beyond its protocol: the images (data.name and data.root, the split, how
    many: a subset or the held-out size; their size), the seed of its crops and head, the precision. A probe
    resumed with others would mix two probes."""
    return {"data": f"{cfg.data.name} {cfg.data.source or cfg.data.root}", "split": cfg.eval.split,
            "images": images, "image_size": cfg.data.image_size, "seed": cfg.train.seed, "precision": rt.precision}


def save(path: Path | None, head: nn.Linear, opt: torch.optim.Optimizer, key: dict[str, Any], epoch: int,
         loss: float, cfg: Config) -> None:
    """Rank 0 writes the probe's checkpoint after `epoch` epochs (`loss`: that epoch's train loss); every process
    waits for it."""
    if path is not None and dist.is_main():
        ckpt_io.save({"schema": ckpt_io.SCHEMA, "model": head.state_dict(), "optimizer": opt.state_dict(),
                      "epoch": epoch, "loss": loss, "probe": key, "config": cfg.to_dict(),
                      "versions": ckpt_io.versions()}, path)
    dist.barrier()


def probe_source(cfg: Config) -> ImageSource:
    """The labelled train split of the probe (eval.linear.train_subset of its images: `subset_of`)."""
    source = eval_source(cfg, "train")
    classes = labelled(source, "the linear probe")
    check_source_labels(source, classes, "the linear probe", "training images")
    check_source_labels(eval_source(cfg, "test"), classes, "the linear probe", "held-out images")
    return subset_of(source, cfg.eval.linear.train_subset) if cfg.eval.linear.train_subset else source


def check_batch(batch: int, images: int) -> None:
    check_global_batch("eval.linear.batch_size", batch, dist.world_size())
    if images < batch:
        raise UserError(f"the probe's train split has {images} images, fewer than one batch "
                        f"(eval.linear.batch_size={batch}); lower eval.linear.batch_size")


def lincls_eval(encoder: Backbone, cfg: Config, rt: Runtime, protocol: LinearProtocol,
                out: Path | None) -> dict[str, Any]:
    """Train the protocol's head on the train split, resuming from `out` (None: no checkpoint); report test top-1."""
    source = probe_source(cfg)
    assert source.num_classes is not None  # `probe_source` refuses images without labels
    check_batch(protocol.batch_size, len(source))
    steps = len(source) // protocol.batch_size
    dim = feature_dim(encoder, protocol.features, protocol.blocks)
    head = new_head(dim, source.num_classes, protocol.init_std, cfg.train.seed).to(rt.device)
    opt = torch.optim.SGD(head.parameters(), lr=protocol.lr, momentum=protocol.momentum,
                          weight_decay=protocol.weight_decay, nesterov=protocol.nesterov)
    lrs = probe_lrs(protocol, steps)  # [epochs, steps]
    path = Path(out) / STATE_FILE if out is not None else None
    trained = {k: v for k, v in dataclasses.asdict(protocol).items() if k not in TEST_ONLY}
    key = {**trained, "classes": source.num_classes, "dim": dim, "steps_per_epoch": steps,
           "encoder_sha256": encoder_digest(encoder) if path is not None else None,  # what a resumed probe shares
           **probe_data(cfg, rt, len(source))}
    if protocol.drop_path is not None:
        encoder = with_drop_path(encoder, protocol.drop_path)
    encoder.eval()
    aug = crop_and_flip(cfg.aug, crop_scale=[0.08, 1.0], crop_ratio=[3 / 4, 4 / 3], hflip=0.5)  # torchvision's
    # RandomResizedCrop and RandomHorizontalFlip defaults: main_lincls.py:273-274; eval_linear.py:86-87; MoBY's
    # data/build.py:130-131
    done, loss = resume(path, head, opt, key)  # a probe resumed after its last epoch trains no more
    for epoch in range(done, protocol.epochs):
        # each epoch's stochastic depth from its own seed: other draws on each process (as moby_linear.py:353
        # seeds each rank), and a resumed probe draws what the uninterrupted one drew
        if protocol.drop_path is not None:
            torch.manual_seed(drop_path_seed(cfg.train.seed, epoch, dist.rank()))
        loader = augmented_loader(cfg, source, aug, protocol.batch_size, "eval.linear.batch_size", epoch * steps,
                                  dist.rank(), dist.world_size())
        loss = train_epoch(encoder, head, opt, loader, lrs[epoch], protocol, rt)
        log.info("linear probe (%s) epoch %d/%d: loss %.4f, lr %.4g", protocol.name, epoch + 1, protocol.epochs,
                 loss, float(lrs[epoch, -1]))
        save(path, head, opt, key, epoch + 1, loss, cfg)
    confusion = test_confusion(encoder, head, cfg, protocol, rt)
    seen = int(confusion.sum())
    extra = {**protocol.summary(), "lr": protocol.lr, "dim": dim, "train_images": len(source), "test_images": seen,
             "steps_per_epoch": steps, "processes": dist.world_size(), "final_train_loss": loss,
             **scores_of(confusion, class_names(source))}
    return {"task": "linear", "metric": "top1", "value": int(confusion.trace()) / seen, "extra": extra}
