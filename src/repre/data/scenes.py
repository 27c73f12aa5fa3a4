"""fashion-scenes: 2 to 4 Fashion-MNIST items pasted at random positions and scales on a 64 px canvas.

Each scene has a label map: 0 for background, 1 + class for the pixels of an item (a later item covers an
earlier one). Scene i of a split is a function of (seed, split, i); train scenes use train-split items and
test scenes test-split items. This is where a global-only objective loses local information, and the
dense probe (`repre eval segment`) measures it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from repre.data.fashion_mnist import CLASSES, MEAN, STD, FashionMNIST

NUM_SEGMENT_CLASSES = len(CLASSES) + 1  # background + the ten garment classes
SIZE = 64  # the canvas's side
SPLIT_KEYS = {"train": 0, "test": 1, "val": 2}
FOREGROUND = 20  # pixel value (of 255) above which an item's pixel counts as the item


def compose(items: torch.Tensor, labels: torch.Tensor, seed: int, split: str, index: int,
            size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene: (uint8 image [size, size], uint8 label map [size, size])."""
    rng = np.random.default_rng([seed, SPLIT_KEYS[split], index])
    canvas = torch.zeros(size, size, dtype=torch.uint8)
    mask = torch.zeros(size, size, dtype=torch.uint8)
    for _ in range(int(rng.integers(2, 5))):
        j = int(rng.integers(0, len(items)))
        side = int(min(size, round(28 * rng.uniform(0.7, 1.5))))
        item = F.interpolate(items[j][None, None].float(), size=(side, side), mode="bilinear", antialias=True,
                             align_corners=False)[0, 0].round().clamp(0, 255).to(torch.uint8)
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        region = (slice(top, top + side), slice(left, left + side))
        fg = item > FOREGROUND
        canvas[region] = torch.where(fg, item, canvas[region])
        mask[region] = torch.where(fg, torch.tensor(int(labels[j]) + 1, dtype=torch.uint8), mask[region])
    return canvas, mask


class FashionScenes:
    """A split of generated scenes as an image source: `load(i) -> (uint8 [3, S, S], -1)`, `mask(i) -> [S, S]`."""

    mean, std = MEAN, STD
    num_classes = None  # no image-level label: k-NN and linear probes do not apply; segmentation does

    def __init__(
        self, root: str | None, split: str, count: int, size: int = SIZE, seed: int = 0,
        items: torch.Tensor | None = None,
    ) -> None:
        """`split`: train, test or val (val scenes use train-split items: pass disjoint `items` indices of
        the item split for the train and val scenes)."""
        source = FashionMNIST(root, "test" if split == "test" else "train")
        images, labels = source.images, source.labels
        if items is not None:
            images, labels = images[items], labels[items]
        scenes = [compose(images, labels, seed, split, i, size) for i in range(count)]
        self.images = torch.stack([s[0] for s in scenes])
        self.masks = torch.stack([s[1] for s in scenes])

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].expand(3, -1, -1), -1

    def mask(self, index: int) -> torch.Tensor:
        return self.masks[index]
