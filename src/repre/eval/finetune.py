"""End-to-end fine-tuning with a new head: layer-wise lr decay, label smoothing, warm-up + cosine, AdamW.

As BEiT / MAE fine-tuning, shortened for CPU presets: every parameter trained, a new head; the lr of block i is
lr * decay^(depth - i) (patch embedding and tokens at depth 0, the head and final norm at full lr); no weight
decay on biases, norms and the parameters the timm model names in `no_weight_decay()` (a ViT's position
embedding and class token, a Swin's position tables, as Swin's own fine-tuning). The head reads the timm
model's own pooling: a ViT's class token, as DeiT's and MoCo v3's fine-tuning (MAE averages the patch tokens);
a Swin's mean. Training augmentation: random resized crop and flip only (MAE's recipe adds RandAugment, random
erasing, mixup and cutmix).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from repre.config import Config
from repre.core.runtime import LossScaler, Runtime
from repre.core.schedules import scaled_lr, warmup_cosine
from repre.data.evaluation import eval_loader
from repre.data.labels import check_labels, check_source_labels, class_names, labelled
from repre.data.splits import eval_source, subset_of
from repre.errors import UserError
from repre.eval.augmented import augmented_loader, crop_and_flip
from repre.eval.features import frozen_outputs
from repre.eval.scores import per_class
from repre.models.attention import training_attention
from repre.models.backbone import Backbone


def block_offsets(model: nn.Module) -> list[int]:
    """Swin: the index of each stage's first block in the flat order of all blocks ([0] for a ViT)."""
    if hasattr(model, "blocks"):
        return [0]
    stages: Any = model.layers  # a Swin's (timm's SwinTransformerStage), each with its `blocks`
    sizes = [len(stage.blocks) for stage in stages]
    return [sum(sizes[:i]) for i in range(len(sizes) + 1)]


def layer_id(name: str, depth: int, offsets: list[int] | None = None) -> int:
    """0 for the patch embedding and tokens, i + 1 for block i (Swin: counted over all stages; a stage's patch
    merging, which timm puts at its start, goes with the block before it, as SimMIM's `get_swin_layer` puts it
    at the end of the stage before), depth + 1 for everything after the blocks."""
    if name.startswith(("cls_token", "dist_token", "pos_embed", "reg_token", "patch_embed", "absolute_pos_embed")):
        return 0
    parts = name.split(".")
    if parts[0] == "blocks":
        return int(parts[1]) + 1
    if parts[0] == "layers" and offsets:
        stage = int(parts[1])
        return offsets[stage] + (int(parts[3]) + 1 if parts[2] == "blocks" else 0)
    return depth + 1


def layer_decay_groups(model: nn.Module, depth: int, weight_decay: float, decay: float) -> list[dict]:
    """AdamW groups with an `lr_scale` each (layer-wise decay) and weight decay only on matrices that the model
    does not exempt (`no_weight_decay()`). `depth`: the number of blocks (a Swin's blocks over all its stages).

    Not timm's `param_groups_layer_decay`: its layers follow the model's `group_matcher`, which puts a ViT's
    final norm one layer below the head (decay x its lr) and a Swin's patch merging with the stage after it;
    MAE's `util/lr_decay.py:64-76` gives the final norm the head's lr and SimMIM's `optimizer.py:123-136` the
    patch merging the layer of the block before it, as `layer_id` does."""
    groups: dict[tuple[int, bool], dict] = {}
    offsets = block_offsets(model)
    no_weight_decay = getattr(model, "no_weight_decay", None)  # timm's models that exempt parameters name them
    exempt = set(no_weight_decay()) if no_weight_decay is not None else set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth, offsets)
        no_wd = p.ndim == 1 or name in exempt
        group = groups.setdefault((lid, no_wd), {
            "params": [], "weight_decay": 0.0 if no_wd else weight_decay, "lr_scale": decay ** (depth + 1 - lid),
        })
        group["params"].append(p)
    return list(groups.values())


def new_head(model: nn.Module, classes: int) -> None:
    """A head of `classes` outputs on the timm model, its weights drawn as MAE's fine-tuning draws them (a
    truncated normal of std 2e-5, facebookresearch/mae main_finetune.py:257; BEiT's the same, 0.02 x 0.001) and
    its bias 0: the first logits near 0, where timm's default head starts them at random."""
    timm_model: Any = model  # reset_classifier, get_classifier: every timm model's, declared by no class they share
    timm_model.reset_classifier(classes)
    heads = timm_model.get_classifier()
    for head in heads if isinstance(heads, tuple) else (heads,):  # a distilled DeiT's two, whose logits it averages
        nn.init.trunc_normal_(head.weight, std=2e-5)
        nn.init.zeros_(head.bias)


def finetune_eval(encoder: Backbone, cfg: Config, rt: Runtime, out: Path | None = None) -> dict[str, Any]:
    """Fine-tune the encoder's timm model in place, with a new head, on the train split; report test top-1. The
    encoder is changed: a caller that keeps it passes a copy (`evaluate` builds one from the checkpoint). `out`:
    no file written (the fine-tuned weights are not kept)."""
    e = cfg.eval
    source = eval_source(cfg, "train")
    classes = labelled(source, "fine-tuning")
    check_source_labels(source, classes, "fine-tuning", "training images")
    check_source_labels(eval_source(cfg, "test"), classes, "fine-tuning", "held-out images")
    if e.finetune.train_subset:
        source = subset_of(source, e.finetune.train_subset)
    model = encoder.model
    new_head(model, classes)
    model.requires_grad_(True)  # all of it, as the references: pre-training may have frozen some (model.init=mocov3
    # fixes its sin-cos position embedding, method.mocov3.freeze_patch_embed the patch projection)
    model.to(rt.device).train()
    loader = augmented_loader(cfg, source, crop_and_flip(cfg.aug, crop_scale=e.finetune.crop_scale),
                              e.finetune.batch_size, "eval.finetune.batch_size")
    blocks = block_offsets(model)[-1] if encoder.hierarchical else encoder.num_units
    opt = torch.optim.AdamW(layer_decay_groups(model, blocks, e.finetune.weight_decay, e.finetune.layer_decay))
    lrs = warmup_cosine(scaled_lr(e.finetune.lr, e.finetune.batch_size), 0.0, e.finetune.steps,
                        round(e.finetune.warmup_fraction * e.finetune.steps))
    loss = train_steps(model, opt, iter(loader), lrs, e.finetune.label_smoothing, rt)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # its top-1 would measure nothing
        raise UserError(f"fine-tuning diverged (weights that are not finite after {e.finetune.steps} steps): lower "
                        f"eval.finetune.lr (now {e.finetune.lr:g})")
    pred, truth = test_predictions(model, cfg, rt)
    check_labels(truth, classes, "fine-tuning", "held-out images")
    return {"task": "finetune", "metric": "top1", "value": float((pred == truth).sum()) / max(len(truth), 1),
            "extra": {"steps": e.finetune.steps, "final_train_loss": loss if math.isfinite(loss) else None,
                      **per_class(pred, truth, classes, class_names(source))}}


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, batches: Iterator[dict], lrs: torch.Tensor,
                label_smoothing: float, rt: Runtime) -> float:
    """One AdamW step per lr of `lrs` [steps] (each group's lr times its `lr_scale`) on the next batch's first
    view [B, 3, H, W] and its labels [B] -> the last step's loss."""
    # fp16 needs its loss scaled (small gradients underflow) and a step with overflowing gradients skipped (it
    # would turn the weights to NaN), as pre-training's scaler does; in bf16 and fp32 the scaler does nothing
    scaler = LossScaler(rt)
    for lr in lrs.tolist():
        batch = next(batches)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        with training_attention(model, rt.device, rt.dtype):  # the backward too (`Trainer.train_step`)
            with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp):
                logits = model(batch["views"][:, 0].to(rt.device))
            check_labels(batch["label"], logits.shape[1], "fine-tuning", "training images")
            loss = F.cross_entropy(logits.float(), batch["label"].to(rt.device), label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return float(loss.detach())


def test_predictions(model: nn.Module, cfg: Config, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """The fine-tuned classifier's predicted and true labels [M] of the test split's images."""
    logits, labels = frozen_outputs(model, eval_loader(cfg, "test", cfg.eval.finetune.test_subset), rt, model)
    assert labels is not None  # an `eval_loader`'s batches hold labels
    return logits.argmax(dim=1), labels
