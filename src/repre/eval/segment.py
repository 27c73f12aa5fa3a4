"""Dense linear probe: a 1x1 conv on frozen patch-token maps, logits bilinearly upsampled, cross-entropy.

Data: fashion-scenes (probe-train scenes from train-split items, probe-test scenes from test-split items).
An encoder pre-trained at another image size is evaluated at the scene size with resampled position
embeddings (timm's `set_input_size`). Reported: mIoU over the classes present in the test scenes (`value`)
and pixel accuracy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from repre.config import Config
from repre.data.fashion_mnist import FashionMNIST
from repre.data.loader import val_range
from repre.data.scenes import NUM_SEGMENT_CLASSES, FashionScenes
from repre.data.views import normalize
from repre.engine.runtime import Runtime
from repre.eval.probe import fit_probe
from repre.models.backbone import Backbone


@torch.no_grad()
def feature_maps(encoder: Backbone, images: torch.Tensor, mean, std, rt: Runtime, batch: int) -> torch.Tensor:
    """uint8 images [N, 3, S, S] -> last-block patch-token maps [N, D, S/p, S/p] (final norm applied), float32."""
    model = encoder.model
    size = tuple(images.shape[-2:])
    if tuple(model.patch_embed.img_size) != size:
        model.set_input_size(img_size=size)  # resamples the position embeddings
    was_training = encoder.training
    encoder.eval()
    out = []
    for chunk in images.split(batch):
        x = normalize(chunk.float().div(255), mean, std).to(rt.device)
        with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp):
            (maps,) = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)
        out.append(maps.float().cpu())
    encoder.train(was_training)
    return torch.cat(out)


def train_probe(feats: torch.Tensor, masks: torch.Tensor, classes: int, lr: float, epochs: int, seed: int = 0):
    """feats [N, D, h, w], masks [N, S, S] -> a 1x1 conv probe trained with AdamW + cosine."""
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, target.long())

    probe = torch.nn.Conv2d(feats.shape[1], classes, 1)
    return fit_probe(probe, feats, masks, loss, lr, 1e-4, epochs, batch=64, seed=seed)


@torch.no_grad()
def confusion(probe: torch.nn.Conv2d, feats: torch.Tensor, masks: torch.Tensor, classes: int) -> torch.Tensor:
    """[classes, classes] pixel counts, rows = truth, columns = prediction."""
    conf = torch.zeros(classes, classes, dtype=torch.long)
    for f, m in zip(feats.split(64), masks.split(64), strict=True):
        pred = F.interpolate(probe(f), size=m.shape[-2:], mode="bilinear", align_corners=False).argmax(dim=1)
        conf += torch.bincount(m.long().flatten() * classes + pred.flatten(), minlength=classes**2).view(classes, classes)
    return conf


def miou(conf: torch.Tensor) -> tuple[float, float, list[float | None]]:
    """(mean IoU over classes present in truth or prediction, pixel accuracy, per-class IoU or None)."""
    tp = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    per_class = [float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]
    present = [v for v in per_class if v is not None]
    return sum(present) / max(len(present), 1), float(tp.sum() / conf.sum().clamp_min(1)), per_class


def scene_splits(cfg: Config) -> tuple[FashionScenes, FashionScenes]:
    """Probe-train and probe-test scenes; with eval.split=val the probe-test scenes are composed from the
    last eval.val_size train items and the probe-train scenes from the others (the test split is not read)."""
    e, d = cfg.eval, cfg.data
    if e.split == "test":
        return (FashionScenes(d.root, "train", e.segment_train, d.scene_size, seed=cfg.train.seed),
                FashionScenes(d.root, "test", e.segment_test, d.scene_size, seed=cfg.train.seed))
    n = len(FashionMNIST(d.root, "train"))
    start = val_range(n, e.val_size)
    return (FashionScenes(d.root, "train", e.segment_train, d.scene_size, cfg.train.seed, items=(0, start)),
            FashionScenes(d.root, "val", e.segment_test, d.scene_size, cfg.train.seed, items=(start, n)))


def segment_eval(encoder: Backbone, cfg: Config, rt: Runtime) -> dict[str, Any]:
    """Train the probe on probe-train scenes, report mIoU and pixel accuracy on probe-test scenes."""
    e, d = cfg.eval, cfg.data
    train, test = scene_splits(cfg)
    mean, std = (d.mean, d.std) if d.mean is not None else (train.mean, train.std)
    f_train = feature_maps(encoder, train.images[:, None].expand(-1, 3, -1, -1), mean, std, rt, e.batch_size)
    f_test = feature_maps(encoder, test.images[:, None].expand(-1, 3, -1, -1), mean, std, rt, e.batch_size)
    probe = train_probe(f_train, train.masks, NUM_SEGMENT_CLASSES, e.segment_lr, e.segment_epochs, cfg.train.seed)
    m, acc, per_class = miou(confusion(probe, f_test, test.masks, NUM_SEGMENT_CLASSES))
    extra = {"pixel_acc": acc, "per_class_iou": per_class, "train_scenes": len(train), "test_scenes": len(test),
             "feature_grid": list(f_train.shape[-2:])}
    return {"task": "segment", "metric": "miou", "value": m, "extra": extra}
