"""A folder of images with PNG label masks of the same stems (ADE20K-style), for the dense probe.

    ROOT/images/train/*.jpg   ROOT/masks/train/*.png      (also: annotations/ for masks,
    ROOT/images/val/*.jpg     ROOT/masks/val/*.png         training/ and validation/ for the splits)

A mask holds one class index per pixel (8- or 16-bit grayscale, 1-bit, or a palette PNG whose indices are the
classes; an RGB PNG whose three channels are equal reads as grayscale); `ignore` marks pixels that are neither
trained on nor scored (ADE20K's reduced labels use 255). Images are resized (shorter side) and centre-cropped to
`size`, masks the same way with nearest-neighbour sampling. An image without a mask is left out with a warning;
an unreadable pair likewise (one warning for all, naming the first and why).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from repre.data.folder import EXTENSIONS, HIDDEN, MEAN, STD, UnreadableImage, decode
from repre.errors import UserError

log = logging.getLogger("repre")
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "validation", "test")}
MASK_DIRS = ("masks", "annotations", "labels")


def _split_dir(base: Path, split: str) -> Path | None:
    return next((base / n for n in SPLIT_NAMES[split] if (base / n).is_dir()), None)


def find_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) paths of `split` ("train" or "val"), matched by file stem, sorted."""
    root = Path(root)
    layout = (f"{root}/images/{{train,val}}/<name>.jpg and {root}/masks/{{train,val}}/<name>.png (masks/ may be "
              f"{'/ or '.join(MASK_DIRS[1:])}/; train/ training/, val/ validation/ or test/)")
    if not root.is_dir():
        raise UserError(f"eval.segment.root={root} is no folder: give the folder of images/ and masks/")
    mask_base = next((root / d for d in MASK_DIRS if (root / d).is_dir()), None)
    if not (root / "images").is_dir() or mask_base is None:
        raise UserError(f"eval.segment.root={root} needs the layout {layout}")
    images, masks = _split_dir(root / "images", split), _split_dir(mask_base, split)
    if images is None or masks is None:
        held_out = "; without one, --set eval.split=val tests on a part of the train pairs" if split == "val" else ""
        raise UserError(f"no {split} split under {root}: expected {layout}{held_out}")
    by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() == ".png" and not HIDDEN.match(p.name)}
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in EXTENSIONS and not HIDDEN.match(p.name))
    pairs = [(p, by_stem[p.stem]) for p in files if p.stem in by_stem]
    if len(pairs) < len(files):
        missing = next(p for p in files if p.stem not in by_stem)
        log.warning("%d of %d %s images have no mask in %s (e.g. %s): left out",
                    len(files) - len(pairs), len(files), split, masks, missing.name)
    if not pairs:
        raise UserError(f"no image in {images} has a mask of the same name (.png) in {masks}")
    return pairs


# EXIF orientation -> the transpose that turns the stored pixels upright (Pillow's `ImageOps.exif_transpose`)
TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_90}


def stored_turn(path: Path) -> tuple[int, tuple[int, int]]:
    """An image file's EXIF orientation (1: none, or unreadable) and its stored size (W, H), before turning."""
    try:
        with Image.open(path) as img:
            return int(img.getexif().get(0x0112, 1)), img.size
    except Exception:  # noqa: BLE001 - PIL raises many types; `decode` names the file's problem
        return 1, (0, 0)


def read_pair(image_path: Path, mask_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """An image (uint8 [3, H, W], turned upright by its EXIF orientation, as every image repre reads) and its
    mask (int32 [H, W]) in the same orientation: a mask of the image's stored size is taken to label the stored
    pixels and is turned with them; one already of the turned size is taken as it is."""
    image = decode(image_path)
    orientation, stored = stored_turn(image_path)
    return image, read_mask(mask_path, TURNS.get(orientation), stored)


def read_mask(path: Path, turn: Image.Transpose | None = None, stored: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """A PNG label map -> int32 [H, W] of class indices (palette PNGs: the palette indices; 1-bit: 0 and 1; RGB
    with equal channels: the channel), turned by `turn` where its size (W, H) is `stored`, its image's before
    the image's EXIF turn."""
    try:
        with Image.open(path) as img:
            if turn is not None and img.size == tuple(stored):
                img = img.transpose(turn)
            arr = np.array(img)
            mode = img.mode
    except Exception as exc:  # noqa: BLE001 - PIL raises many types
        raise UnreadableImage(f"{path}: {exc}") from None
    if mode in ("RGB", "RGBA") and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        arr = arr[..., 0]  # a grayscale mask saved with three channels
    elif mode in ("RGB", "RGBA"):
        raise UnreadableImage(f"{path}: an {mode} colour mask; a mask holds class indices: map each colour to its "
                              "class (0, 1, ...) and save a grayscale (L) or palette (P) PNG")
    elif mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise UnreadableImage(f"{path}: a mask of mode {mode}; save its class indices as a grayscale (L, I;16) or "
                              "palette (P) PNG")
    return torch.from_numpy(arr.astype(np.int32))


def fit(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [3, H, W] and [H, W] -> resized (shorter side = size) and centre-cropped to size x size."""
    if image.shape[-2:] != mask.shape:
        raise UnreadableImage(f"image {tuple(image.shape[-2:])} and mask {tuple(mask.shape)} differ in size: a "
                              "mask is of its image's size, a label per pixel")
    h, w = mask.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    msk = F.interpolate(mask[None, None].float(), size=(nh, nw), mode="nearest-exact")
    top, left = (nh - size) // 2, (nw - size) // 2
    img = img[0, :, top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8)
    return img, msk[0, 0, top:top + size, left:left + size].to(torch.int32)


class SegmentationFolder:
    """One split: `images` uint8 [N, 3, S, S], `masks` int32 [N, S, S] (class indices; `ignore` not scored).
    `pairs`: those of `find_pairs` to read (default: the split's first `count`, or all)."""

    mean, std = MEAN, STD

    def __init__(self, root: str | Path, split: str, size: int, count: int | None = None,
                 ignore: int = 255, pairs: list[tuple[Path, Path]] | None = None) -> None:
        if pairs is None:
            pairs = find_pairs(root, split)[:count] if count else find_pairs(root, split)
        images, masks, skipped = [], [], []
        for image_path, mask_path in pairs:
            try:
                img, msk = fit(*read_pair(image_path, mask_path), size)
            except UnreadableImage as exc:
                skipped.append(f"{image_path.name}: {exc}")
                continue
            images.append(img)
            masks.append(msk)
        if not images:
            raise UserError(f"no readable image/mask pair among the {len(pairs)} of the {split} split of {root}, "
                            f"e.g. {skipped[0]}")
        if skipped:
            log.warning("%d of the %d %s image/mask pairs of %s left out as unreadable, e.g. %s", len(skipped),
                        len(pairs), split, root, skipped[0])
        self.images, self.masks, self.ignore = torch.stack(images), torch.stack(masks), ignore

    def __len__(self) -> int:
        return len(self.images)
