"""Which images of a source a run or an evaluation reads: a fixed subset, the validation hold-out of the
train split, the training images and the labelled splits of an evaluation."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch

from repre.config import Config
from repre.core import dist
from repre.data.folder import UnreadableImage, warn_unreadable
from repre.data.labels import class_names
from repre.data.sources import (
    STREAMS_EVALUATE,
    EncodedImages,
    ImageSource,
    build_source,
    image_path,
)
from repre.errors import UserError

log = logging.getLogger("repre")


class Selection:
    """The images of a source at `indices`, in that order, with its statistics and class names (`select`
    makes one)."""

    def __init__(self, source: ImageSource, indices: torch.Tensor) -> None:
        # an array, not a list of ints: forked data workers share its pages (`folder.PackedStrings`)
        self.source, self.indices = source, indices.numpy().astype(np.int64)
        self.mean, self.std, self.num_classes = source.mean, source.std, source.num_classes
        self.classes = class_names(source)
        # a selection of a class-sorted source in its order (the validation split's sorted indices) is class-sorted
        self.class_sorted = getattr(source, "class_sorted", False)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.source.load(int(self.indices[index]))

    def path(self, index: int) -> str:
        return image_path(self.source, int(self.indices[index]))


class _EncodedSource(ImageSource, EncodedImages, Protocol):
    """An image source whose images can leave undecoded."""


class EncodedSelection(Selection):
    """A `Selection` of a source whose images can leave undecoded (`EncodedImages`): so can its own."""

    source: _EncodedSource

    def encoded(self, index: int) -> tuple[bytes, str, int]:
        return self.source.encoded(int(self.indices[index]))


def select(source: ImageSource, indices: torch.Tensor) -> Selection:
    """The images of `source` at `indices` [n], offering what `source` offers (its files' bytes included)."""
    return (EncodedSelection if isinstance(source, EncodedImages) else Selection)(source, indices)


def subset_of(source: ImageSource, count: int) -> Selection:
    """`count` images of `source` (all of them if it has fewer), the same for every run. Folders and shards
    often hold their images class by class, so their first `count` could be a few classes: a source read from
    files, or one that says it may be so (`class_sorted`: a dataset of your own code), gives every
    (len / count)-th image, each class in proportion. Fashion-MNIST and the generated datasets are stored in
    random order: they give their first `count`, which is such a sample already."""
    size = len(source)
    count = min(count, size)
    spread = size > 0 and (bool(image_path(source, 0)) or getattr(source, "class_sorted", False))
    index = torch.arange(count)
    return select(source, index * size // count if spread else index)


def spread_readable(source: ImageSource, count: int) -> dict[int, tuple[torch.Tensor, int]]:
    """`count` images of `source` picked as `subset_of` picks them (spread over a class-sorted folder), an
    unreadable one replaced by the next readable image not picked yet (named in a warning): {index: (uint8
    [3, H, W], label)} in the order picked; fewer where fewer can be read. What a picture of a source shows."""
    picked: dict[int, tuple[torch.Tensor, int]] = {}
    failed: set[int] = set()  # each image is tried once
    for pick in subset_of(source, count).indices.tolist():
        for i in (j % len(source) for j in range(pick, pick + len(source))):
            if i in picked or i in failed:
                continue
            try:
                picked[i] = source.load(i)
            except UnreadableImage as exc:
                failed.add(i)
                warn_unreadable(str(exc), "not shown")
                continue
            break
        else:  # every image was tried: none is left
            break
    return picked


def val_split(size: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), each sorted, of a train split of `size` images: a random `val_size`
    of them, the same for every run and seed of that `size` (another image count draws another); each class in
    proportion on average, not by construction (a small `val_size` may miss a class)."""
    if not 0 < val_size < size:
        hint = (f": --set eval.val_size={max(1, size // 10)} holds out a tenth" if size >= 10 else
                ", too few to hold any out: give the evaluation more images" if size < 2 else
                f": --set eval.val_size={max(1, size // 10)}")
        raise UserError(f"eval.val_size={val_size} must be from 1 to {size - 1}, fewer than the train split's "
                        f"{size} images{hint}")
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(0))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def eval_source(cfg: Config, split: str) -> ImageSource:
    """The labelled `split` ("train" or "test") an evaluation uses. With eval.split=val the evaluation never
    sees the test split: "test" is a fixed random eval.val_size of the train images, "train" the others."""
    if cfg.data.streamed:
        raise UserError(STREAMS_EVALUATE.format(root=cfg.data.root))
    if cfg.eval.split == "test":
        return build_source(cfg.data, split, seed=cfg.train.seed)
    source = build_source(cfg.data, "train", seed=cfg.train.seed)
    train_idx, val_idx = val_split(len(source), cfg.eval.val_size)
    return select(source, train_idx if split == "train" else val_idx)


def train_source(cfg: Config) -> ImageSource:
    """The images a run pre-trains on: the train split, or its fixed `data.subset` (`subset_of`)."""
    source = build_source(cfg.data, "train", seed=cfg.train.seed)
    if cfg.data.subset and cfg.data.subset > len(source) and dist.is_main():
        log.warning("data.subset=%d, but the training split holds %d images: all of them are used",
                    cfg.data.subset, len(source))
    return subset_of(source, cfg.data.subset) if cfg.data.subset else source
