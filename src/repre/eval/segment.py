"""Dense linear probe: a 1x1 conv on frozen patch-token maps, logits bilinearly upsampled, cross-entropy.

Data (eval.segment.data): fashion-scenes (probe-train scenes from train-split items, probe-test scenes from
test-split items), or a folder of images with PNG label masks (ADE20K-style, `repre.data.seg_folder`).
An encoder pre-trained at another image size is evaluated at the scene size with its position embedding made
for that size, a Swin with the windows it trained with (`Backbone.at_size`). Reported: mIoU over the classes
present in the test scenes' truth or in the prediction (a class predicted but absent counts 0) (`value`), and
pixel accuracy; `out/segment.png` draws the first probe-test images, their truth and the probe's prediction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from repre.config import Config
from repre.core import dist
from repre.core.pictures import Column, Picture, save_result_picture, sheet, thumb_side, tile
from repre.core.runtime import Runtime
from repre.data.fashion_mnist import CLASSES, FashionMNIST
from repre.data.scenes import NUM_SEGMENT_CLASSES, SIZE, FashionScenes
from repre.data.seg_folder import SegmentationFolder, find_pairs
from repre.data.sources import pretraining_stats
from repre.data.splits import val_split
from repre.data.views import Stats, normalize
from repre.errors import UserError
from repre.eval.features import frozen_outputs
from repre.eval.probe import fit_probe
from repre.models.backbone import Backbone

log = logging.getLogger("repre")

PICTURE = "segment.png"
SHOWN = 8  # probe-test images drawn
# a class's colour in the picture, by index (cycled past the last): distinct colours, the background black
PALETTE = [("black", (0, 0, 0)), ("red", (230, 25, 75)), ("green", (60, 180, 75)), ("yellow", (255, 225, 25)),
           ("blue", (0, 130, 200)), ("orange", (245, 130, 48)), ("purple", (145, 30, 180)), ("cyan", (70, 240, 240)),
           ("magenta", (240, 50, 230)), ("lime", (210, 245, 60)), ("pink", (250, 190, 212)), ("teal", (0, 128, 128)),
           ("lavender", (220, 190, 255)), ("brown", (170, 110, 40)), ("maroon", (128, 0, 0)), ("olive", (128, 128, 0)),
           ("navy", (0, 0, 128)), ("grey", (128, 128, 128))]
IGNORED = (255, 255, 255)  # pixels without a label


def dense_unit(encoder: Backbone) -> int:
    """The tap unit the dense probe reads: a ViT's last block; a Swin's deepest stage of stride <= 16."""
    if not encoder.hierarchical:
        return encoder.num_units - 1
    return max(i for i, s in enumerate(encoder.unit_strides) if s <= 16 or i == 0)


def probe_size(cfg: Config) -> int:
    """The side of the probe's images: eval.segment.size, else the scenes' canvas or a folder's data.image_size."""
    e = cfg.eval.segment
    return e.size or (SIZE if e.data == "fashion-scenes" else cfg.data.image_size)


def check_size(encoder: Backbone, cfg: Config) -> None:
    """The probe's image side (`probe_size`, set or by default) must be a multiple of the stride of the map the
    probe reads: else the map covers part of the image, and its predictions, stretched over all of it, land off
    their pixels."""
    stride = encoder.unit_strides[dense_unit(encoder)]
    size = probe_size(cfg)
    if size % stride:
        lower, upper = size - size % stride, size - size % stride + stride
        given = "" if cfg.eval.segment.size else " (its default)"
        raise UserError(f"eval.segment.size={size}{given} is not a multiple of {stride}, the stride of the maps the "
                        f"dense probe reads: --set eval.segment.size={lower or upper} (or {upper})")
    if encoder.hierarchical:  # a Swin keeps its windows at the probe's size, or is refused (before the data)
        try:
            encoder.check_windows_at((size, size), multiple=stride)
        except UserError as exc:
            raise UserError(f"eval.segment.size={size}: {exc}") from None


def feature_maps(encoder: Backbone, images: torch.Tensor, mean: Stats, std: Stats, rt: Runtime,
                 batch: int) -> torch.Tensor:
    """uint8 images [N, 3, S, S] (S: the encoder's input size, `Backbone.at_size`) -> patch-token maps [N, D, h, w],
    float32: a ViT's last block (final norm applied), a Swin's deepest stage of stride <= 16 (its last stage is
    too coarse for a dense probe; an inner stage has no norm after it)."""
    unit = dense_unit(encoder)
    batches = ((normalize(chunk.float().div(255), mean, std), None) for chunk in images.split(batch))
    maps, _ = frozen_outputs(encoder, batches, rt, lambda x: encoder.unit_maps(x, [unit])[0])
    return maps


def train_probe(feats: torch.Tensor, masks: torch.Tensor, classes: int, lr: float, epochs: int, seed: int = 0,
                ignore: int = 255) -> torch.nn.Conv2d:
    """feats [N, D, h, w], masks [N, S, S] -> a 1x1 conv probe trained with AdamW + cosine."""
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, target.long(), ignore_index=ignore)

    probe = torch.nn.Conv2d(feats.shape[1], classes, 1)
    return fit_probe(probe, feats, masks, loss, lr, 1e-4, epochs, batch=64, seed=seed)


@torch.no_grad()
def predicted(probe: torch.nn.Conv2d, feats: torch.Tensor, size: tuple[int, int], ignore: int = 255) -> torch.Tensor:
    """feats [N, D, h, w] -> the probe's class of each pixel [N, *size]: the logits upsampled bilinear, as
    `confusion` scores them. An `ignore` label among the classes (ADE20K's 0: unlabelled) is no prediction."""
    logits = F.interpolate(probe(feats), size=size, mode="bilinear", align_corners=False)
    if 0 <= ignore < logits.shape[1]:
        logits[:, ignore] = -torch.inf  # after the resize: -inf weighed by 0 there would be NaN
    return logits.argmax(dim=1)


@torch.no_grad()
def confusion(probe: torch.nn.Conv2d, feats: torch.Tensor, masks: torch.Tensor, classes: int,
              ignore: int = 255) -> torch.Tensor:
    """[classes, classes] pixel counts, rows = truth, columns = prediction; `ignore` pixels and labels outside
    [0, classes) are not counted."""
    conf = torch.zeros(classes, classes, dtype=torch.long)
    for f, m in zip(feats.split(64), masks.split(64), strict=True):
        pred = predicted(probe, f, tuple(m.shape[-2:]), ignore)
        m = m.long()
        valid = (m != ignore) & (m >= 0) & (m < classes)
        conf += torch.bincount(m[valid] * classes + pred[valid], minlength=classes**2).view(classes, classes)
    return conf


def miou(conf: torch.Tensor) -> tuple[float, float, list[float | None]]:
    """(mean IoU over classes present in truth or prediction, pixel accuracy, per-class IoU or None)."""
    tp = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    per_class = [float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]
    present = [v for v in per_class if v is not None]
    return sum(present) / max(len(present), 1), float(tp.sum() / conf.sum().clamp_min(1)), per_class


def by_name(values: list[float | None], names: list[str] | None) -> dict[str, float | None]:
    """Each class's value keyed by its name (its label where the names are unknown), as k-NN's per class."""
    return {names[c] if names and len(names) == len(values) else str(c): v for c, v in enumerate(values)}


def coloured(masks: torch.Tensor, ignore: int) -> torch.Tensor:
    """Class maps [N, S, S] -> uint8 [N, 3, S, S] in `PALETTE`'s colours, `ignore` pixels white."""
    table = torch.tensor([rgb for _, rgb in PALETTE] + [IGNORED], dtype=torch.uint8)
    index = torch.where(masks == ignore, len(PALETTE), masks.long() % len(PALETTE))
    return table[index].permute(0, 3, 1, 2)


def legend(shown: list[int], names: list[str] | None, classes: int) -> str:
    """The colours of the classes `shown`, by name where known: "background black, Coat orange, ..."; where
    the classes outnumber the palette's colours, a colour stands for several."""
    def name(c: int) -> str:
        return names[c] if names and c < len(names) else str(c)

    text = ", ".join(f"{name(c)} {PALETTE[c % len(PALETTE)][0]}" for c in shown)
    return text + (f" (the {len(PALETTE)} colours repeat past class {len(PALETTE) - 1})" if classes > len(PALETTE)
                   else "")


def segment_picture(images: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor, ignore: int,
                    names: list[str] | None, classes: int) -> Picture:
    """A row per probe-test image (uint8 [N, 3, S, S]): the image, its true classes and the probe's prediction
    ([N, S, S] each), the prediction's pixel accuracy under it; the colours of the classes drawn named under
    the picture."""
    side = thumb_side(images.shape[-1])
    valid = truth != ignore
    acc = ((pred == truth) & valid).sum(dim=(1, 2)) / valid.sum(dim=(1, 2)).clamp_min(1)
    shown = sorted(set(truth[valid].unique().tolist()) | set(pred.unique().tolist()))
    return sheet([Column([tile(x, side) for x in images], "image"),
                  Column([tile(x, side) for x in coloured(truth, ignore)], "truth"),
                  Column([tile(x, side) for x in coloured(pred, ignore)], "probe", captions=[
                      f"{a:.1%} of pixels" for a in acc.tolist()])],
                 notes=[f"each row: a probe-test image, its classes and the dense probe's prediction (the share of "
                        f"its labelled pixels predicted right under it); colours: {legend(shown, names, classes)}; "
                        "white: no label"])


@dataclass
class ProbeData:
    """Probe-train and probe-test images (uint8 [N, 3, S, S]) with label maps ([N, S, S] class indices)."""

    train_images: torch.Tensor
    train_masks: torch.Tensor
    test_images: torch.Tensor
    test_masks: torch.Tensor
    classes: int
    ignore: int
    names: list[str] | None = None  # the classes' names in index order, where known


def scene_root(cfg: Config) -> str | None:
    """Where the scenes' Fashion-MNIST items are: eval.segment.root, else the run's data.root when it trained on
    Fashion-MNIST (a folder run's root holds its own images), else the default location (None)."""
    if cfg.eval.segment.root:
        return cfg.eval.segment.root
    return cfg.data.root if cfg.data.name == "fashion-mnist" else None


def scene_data(cfg: Config) -> ProbeData:
    """fashion-scenes; with eval.split=val the probe-test scenes are composed from the validation items of the
    train split (`val_split`) and the probe-train scenes from the others (the test split is not read)."""
    e = cfg.eval
    size, seed, root = probe_size(cfg), cfg.train.seed, scene_root(cfg)
    if e.split == "test":
        train = FashionScenes(root, "train", e.segment.train, size, seed=seed)
        test = FashionScenes(root, "test", e.segment.test, size, seed=seed)
    else:
        train_idx, val_idx = val_split(len(FashionMNIST(root, "train")), e.val_size)
        train = FashionScenes(root, "train", e.segment.train, size, seed, items=train_idx)
        test = FashionScenes(root, "val", e.segment.test, size, seed, items=val_idx)
    rgb = lambda x: x[:, None].expand(-1, 3, -1, -1)  # noqa: E731
    return ProbeData(rgb(train.images), train.masks.long(), rgb(test.images), test.masks.long(),
                     NUM_SEGMENT_CLASSES, e.segment.ignore, ["background", *CLASSES])


def folder_data(cfg: Config) -> ProbeData:
    """A folder of images and PNG masks; with eval.split=val the probe-test pairs are a fixed random
    min(eval.val_size, 20%) of the train pairs (`val_split`; the val split is not read)."""
    e = cfg.eval
    if not e.segment.root:
        raise UserError("eval.segment.data=folder needs eval.segment.root=/path (images/ and masks/ inside)")
    size = probe_size(cfg)
    if e.split == "test":
        train = SegmentationFolder(e.segment.root, "train", size, e.segment.train, e.segment.ignore)
        test = SegmentationFolder(e.segment.root, "val", size, e.segment.test, e.segment.ignore)
    else:  # only the pairs the probe reads are decoded
        pairs = find_pairs(e.segment.root, "train")
        train_idx, val_idx = val_split(len(pairs), min(e.val_size, max(1, len(pairs) // 5)))
        train = SegmentationFolder(e.segment.root, "train", size, ignore=e.segment.ignore,
                                   pairs=[pairs[i] for i in train_idx[: e.segment.train].tolist()])
        test = SegmentationFolder(e.segment.root, "train", size, ignore=e.segment.ignore,
                                  pairs=[pairs[i] for i in val_idx[: e.segment.test].tolist()])
    parts = (train.images, train.masks, test.images, test.masks)
    return ProbeData(*parts, mask_classes(parts[1], parts[3], e.segment.classes, e.segment.ignore), e.segment.ignore)


MAX_COUNTED_CLASSES = 1024  # above it, a count from the masks asks to be given (instance ids, colour codes)


def mask_classes(train: torch.Tensor, test: torch.Tensor, given: int, ignore: int) -> int:
    """The classes of masks [N, S, S] (train and test): `given` (eval.segment.classes), or 0: the highest label
    + 1. Refused by name: a label at or above a given count (the probe has no output for it), a count from
    the masks above MAX_COUNTED_CLASSES, train masks with fewer than two labelled classes and test masks with
    no labelled pixel (the probe would score a number that means nothing: 1.0 or 0)."""
    train_labels, test_labels = train[train != ignore], test[test != ignore]
    present = torch.cat([train_labels.unique(), test_labels.unique()]).unique()
    highest = int(present.max()) if present.numel() else 0
    if given and highest >= given:
        raise UserError(f"the masks hold label {highest}, but eval.segment.classes={given} allows 0 to {given - 1}: "
                        f"set eval.segment.classes={highest + 1} (or 0: counted from the masks), or "
                        f"eval.segment.ignore={highest} when it marks pixels to leave out")
    if not given and highest >= MAX_COUNTED_CLASSES:
        raise UserError(f"the masks hold labels up to {highest} ({len(present)} distinct): a class index per "
                        "pixel is expected (instance ids or colour codes are not); map them to 0, 1, ..., or set "
                        f"eval.segment.classes={highest + 1} to probe that many outputs")
    classes = train_labels.unique()
    if len(classes) < 2:
        held = f"only label {int(classes[0])}" if len(classes) else "no label"
        raise UserError(f"the probe-train masks hold {held} outside eval.segment.ignore={ignore}: the probe needs "
                        f"two classes or more; if {ignore} is a class (binary masks saved 0/{ignore}), save it as 1, "
                        "or set eval.segment.ignore to a value the masks do not hold")
    if not test_labels.numel():
        raise UserError(f"no probe-test pixel has a label outside eval.segment.ignore={ignore}: there is nothing to "
                        "score; give test masks with labelled pixels (or another eval.segment.ignore)")
    return given or highest + 1


def segment_eval(encoder: Backbone, cfg: Config, rt: Runtime, out: Path | None = None) -> dict[str, Any]:
    """Train the probe on probe-train images, report mIoU and pixel accuracy on probe-test images; draw the
    first of them, their truth and the prediction into `out/segment.png`."""
    e = cfg.eval
    if e.segment.data == "fashion-scenes" and cfg.data.name != "fashion-mnist" and dist.is_main():
        log.warning("the dense probe measures Fashion-MNIST scenes (eval.segment.data=fashion-scenes), not this "
                    "run's %s images: for masks of your own, --set eval.segment.data=folder "
                    "--set eval.segment.root=DIR (docs/evaluation.md)", cfg.data.name)
    check_size(encoder, cfg)
    data = scene_data(cfg) if e.segment.data == "fashion-scenes" else folder_data(cfg)
    mean, std = pretraining_stats(cfg.data)
    height, width = data.train_images.shape[-2:]
    encoder = encoder.at_size((height, width))
    f_train = feature_maps(encoder, data.train_images, mean, std, rt, e.batch_size)
    f_test = feature_maps(encoder, data.test_images, mean, std, rt, e.batch_size)
    probe = train_probe(f_train, data.train_masks, data.classes, e.segment.lr, e.segment.epochs, cfg.train.seed,
                        data.ignore)
    m, acc, per_class = miou(confusion(probe, f_test, data.test_masks, data.classes, data.ignore))
    extra = {"pixel_acc": acc, "per_class_iou": by_name(per_class, data.names), "classes": data.names,
             "data": e.segment.data,
             "train_images": len(data.train_images), "test_images": len(data.test_images),
             "feature_grid": list(f_train.shape[-2:])}
    if out is not None and dist.is_main():
        n = min(SHOWN, len(data.test_images))
        height, width = data.test_masks.shape[-2:]
        pred = predicted(probe, f_test[:n], (height, width), data.ignore)
        save_result_picture(segment_picture(data.test_images[:n], data.test_masks[:n], pred, data.ignore,
                                            data.names, data.classes), out / PICTURE, extra)
    return {"task": "segment", "metric": "miou", "value": m, "extra": extra}
