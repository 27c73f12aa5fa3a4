"""Generated images with labels and train/test splits: tests and smoke runs need no dataset on disk.

Each class is a shape (square, disk, bars, ring, ...) in a class colour, drawn at a random position and
scale over a noisy background; the randomness is keyed by (seed, split, index), so every split is fixed.
"""

from __future__ import annotations

import numpy as np
import torch

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# the last word of an image's seed key: five words, so that no view's four-word key (seed, epoch, index, view:
# `views.view_rng`) draws the same numbers. NumPy pads a key of three words with zeros, so (seed, 0, index) was
# (seed, 0, index, 0): the first view of epoch 0 would replay the draws that made its own image.
IMAGE_KEY = 0x5EED


def _shape_mask(kind: int, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = (yy - cy) / r, (xx - cx) / r
    inside = (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
    rad = np.sqrt(dy**2 + dx**2)
    masks = [
        inside,  # square
        rad <= 1,  # disk
        inside & (np.floor((dy + 1) * 2) % 2 == 0),  # horizontal bars
        inside & (np.floor((dx + 1) * 2) % 2 == 0),  # vertical bars
        (rad <= 1) & (rad >= 0.55),  # ring
        inside & ((np.abs(dy) < 0.3) | (np.abs(dx) < 0.3)),  # cross
        inside & (dy >= -dx) ,  # triangle
        inside & ((np.floor((dy + 1) * 2) + np.floor((dx + 1) * 2)) % 2 == 0),  # checker
        inside & (np.abs(dy - dx) < 0.45),  # diagonal
        inside & ~((np.abs(dy) < 0.5) & (np.abs(dx) < 0.5)),  # frame
    ]
    return masks[kind % len(masks)]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The draws that make image `index` of `split`."""
    return np.random.default_rng([seed, 0 if split == "train" else 1, index, 0, IMAGE_KEY])


def make_image(seed: int, split: str, index: int, size: int, classes: int) -> tuple[np.ndarray, int]:
    """One image: uint8 [3, size, size] and its class."""
    rng = image_rng(seed, split, index)
    label = index % classes
    hue = label / classes
    color = 0.5 + 0.45 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])))
    img = rng.uniform(0.0, 0.35, size=(3, 1, 1)) + rng.normal(0, 0.06, size=(3, size, size))
    r = rng.uniform(0.22, 0.4) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    mask = _shape_mask(label, size, cy, cx, r)
    img = np.where(mask[None], color[:, None, None] + rng.normal(0, 0.04, size=(3, 1, 1)), img)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), label


class Synthetic:
    """A generated split as an image source: `load(i) -> (uint8 [3, S, S], label)`."""

    mean, std = MEAN, STD

    def __init__(self, split: str, count: int, size: int, classes: int, seed: int = 0) -> None:
        pairs = [make_image(seed, split, i, size, classes) for i in range(count)]
        self.images = torch.from_numpy(np.stack([p[0] for p in pairs]))
        self.labels = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
        self.num_classes = classes

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])
