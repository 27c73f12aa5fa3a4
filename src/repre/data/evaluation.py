"""The loaders of evaluation: resize and centre crop, no augmentation, in a fixed order.

An unreadable image is left out (a batch may then be short, or empty), so that a score counts each readable
image once and no other: `eval_loader` names it in a warning, once per process (a periodic k-NN reads the same
images at each evaluation); `indexed_loader` (what `repre embed` reads) reports it with the source index of
each image it keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from repre.config import Config, DataConfig
from repre.core.compat import workers_stopped
from repre.data.fashion_mnist import FashionMNIST
from repre.data.folder import UnreadableImage, warn_unreadable
from repre.data.sources import ImageSource, pretraining_stats, stats
from repre.data.splits import eval_source, subset_of
from repre.data.views import normalize
from repre.data.workers import resolve_workers, worker_started

CROP_PCT = 0.875  # the centre crop's share of the resized short side (224 of 256), as timm's and DINO's evaluation


@dataclass(frozen=True)
class EvalResize:
    """How evaluation resizes an image before cutting out its centre S x S."""

    interpolation: str = "bilinear"  # or "bicubic"; antialiased either way, as PIL's resampling is
    every_image: bool = False  # True: every short side to floor(S / CROP_PCT), 256 at 224, as the papers'
    # scripts resize; False: repre's rule, an image no larger than S resized to S without a margin (a
    # Fashion-MNIST item is seen whole) and an S x S image left as it is


def centre_view(img: torch.Tensor, size: int, resize: EvalResize = EvalResize()) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, S, S], what evaluation shows the encoder: the short side resized (to S, or
    to floor(S / CROP_PCT) when it is larger than S or `resize.every_image`, as timm's evaluation transform),
    then the centre S x S."""
    if resize.every_image or img.shape[-2:] != (size, size):
        whole = min(img.shape[-2:]) <= size and not resize.every_image
        short = size if whole else math.floor(size / CROP_PCT)
        mode = TF.InterpolationMode(resize.interpolation)
        img = TF.center_crop(TF.resize(img, [short], interpolation=mode, antialias=True), [size, size])
    return img


def timm_preprocessing(cfg: DataConfig, short_sides: Sequence[int] = ()) -> dict[str, Any]:
    """`centre_view` and the normalization of a run's data, in the terms of timm's `pretrained_cfg`: an
    exported encoder carries them, and `timm.data.resolve_data_config({}, model=model)` then builds the
    transform evaluation applies. `crop_pct` 1 (the short side resized to the input, as `centre_view` does
    with an image no larger than it) where most of `short_sides` (those of a sample of the run's images) are at
    most the input size, else CROP_PCT; without a sample, 1 for the datasets whose images are all that small
    (Fashion-MNIST's 28 px items, the generated images)."""
    mean, std = pretraining_stats(cfg)
    if short_sides:
        whole = 2 * sum(side <= cfg.image_size for side in short_sides) >= len(short_sides)
    else:
        side = {"fashion-mnist": FashionMNIST.side, "synthetic": cfg.image_size}
        whole = side.get(cfg.name, cfg.image_size + 1) <= cfg.image_size
    return {"input_size": [3, cfg.image_size, cfg.image_size], "interpolation": "bilinear", "crop_mode": "center",
            "crop_pct": 1.0 if whole else CROP_PCT, "mean": list(mean), "std": list(std)}


class EvalDataset(Dataset):
    """index -> (normalized float [3, S, S] or None for an unreadable image, label, why it is unreadable or
    None): resize then centre crop, no augmentation. `collate` leaves the unreadable images out."""

    def __init__(self, source: ImageSource, size: int, mean, std, resize: EvalResize = EvalResize()) -> None:
        self.source, self.size, self.mean, self.std, self.resize = source, size, mean, std, resize

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str | None]:
        return self.read(index)

    def read(self, index: int) -> tuple[torch.Tensor | None, int, str | None]:
        """(the prepared image or None, label or -1, why it is unreadable or None)."""
        try:
            img, label = self.source.load(index)
        except UnreadableImage as exc:
            return None, -1, str(exc)
        return self.prepare(img), label, None

    def prepare(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] -> normalized float [3, S, S] (`centre_view`, normalized)."""
        return normalize(centre_view(img, self.size, self.resize)[None].float() / 255, self.mean, self.std)[0]

    def stack(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The readable images of a batch -> [B, 3, S, S], B possibly 0."""
        return torch.stack(images) if images else torch.empty(0, 3, self.size, self.size)

    def collate(self, items: list[tuple[torch.Tensor | None, int, str | None]],
                ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Items -> (the readable images [B, 3, S, S]; their labels [B] int64; why each other one is unreadable)."""
        readable = [(x, y) for x, y, _ in items if x is not None]
        labels = torch.tensor([y for _, y in readable], dtype=torch.int64)
        return self.stack([x for x, _ in readable]), labels, [why for _, _, why in items if why is not None]


LoaderData = TypeVar("LoaderData", bound=Dataset)


class EvalLoader(DataLoader, Generic[LoaderData]):
    """`eval_loader`'s: batches of (x [B, 3, S, S], labels [B]); an unreadable image left out and named in a
    warning the first time this process meets it (the data workers report it; the warning is the main
    process's, which outlives them). Generic in its dataset: `eval_loader`'s reads an `EvalDataset`."""

    dataset: LoaderData

    # a generator of its batches where DataLoader's gives its iterator object
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[override]
        with workers_stopped(super().__iter__()) as batches:  # also when the generator is closed unfinished
            for x, labels, unreadable in batches:
                for why in unreadable:
                    warn_unreadable(why, "left out of the evaluation")
                yield x, labels


@dataclass
class IndexedBatch:
    """What an `indexed_loader` batch holds beside its images."""

    indices: torch.Tensor  # [B] int64: the source index of each image of the batch
    labels: torch.Tensor  # [B] int64 (-1: none)
    unreadable: list[tuple[int, str]]  # (source index, why) of the images left out
    end: int  # one past the batch's last source index, readable or not


class IndexedEvalDataset(EvalDataset):
    """index -> (normalized float [3, S, S] or None, label, index, why it is unreadable or None): the caller
    reports an unreadable image."""

    # items and batches of its own (the source index beside each image): it shares EvalDataset's reading
    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int, str | None]:  # type: ignore[override]
        x, label, why = self.read(index)
        return x, label, index, why

    def collate(self, items: list) -> tuple[torch.Tensor, IndexedBatch]:  # type: ignore[override]
        """Items -> (the readable images [B, 3, S, S], B possibly 0; their IndexedBatch)."""
        readable = [it for it in items if it[0] is not None]
        batch = IndexedBatch(
            indices=torch.tensor([it[2] for it in readable], dtype=torch.int64),
            labels=torch.tensor([it[1] for it in readable], dtype=torch.int64),
            unreadable=[(it[2], it[3]) for it in items if it[0] is None],
            end=max(it[2] for it in items) + 1,
        )
        return self.stack([it[0] for it in readable]), batch


def _loader_settings(cfg: Config) -> dict[str, Any]:
    """The DataLoader arguments every evaluation loader shares."""
    return dict(
        batch_size=cfg.eval.batch_size,
        num_workers=resolve_workers(cfg.train.num_workers),
        worker_init_fn=worker_started,  # a stop signal reaches the main process alone (k-NN during training)
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG alone (k-NN during training)
    )


def eval_loader(cfg: Config, split: str, subset: int | None,
                resize: EvalResize = EvalResize()) -> EvalLoader[EvalDataset]:
    """Deterministic loader over `split` (see `eval_source`) for feature extraction: batches of (x [B, 3, S, S],
    labels [B]), each image resized as `resize` says, an unreadable image left out and named in a warning once
    (`EvalLoader`)."""
    source = eval_source(cfg, split)
    if subset:
        source = subset_of(source, subset)
    mean, std = stats(cfg.data, source)
    dataset = EvalDataset(source, cfg.data.image_size, mean, std, resize)
    return EvalLoader(dataset, shuffle=False, collate_fn=dataset.collate, **_loader_settings(cfg))


def indexed_loader(cfg: Config, source: ImageSource, start: int = 0) -> DataLoader:
    """The images of `source` from index `start` to its end, in order, as evaluation sees them: batches of
    (x [B, 3, S, S], IndexedBatch), an unreadable image left out of x and named in `unreadable`."""
    mean, std = stats(cfg.data, source)
    dataset = IndexedEvalDataset(source, cfg.data.image_size, mean, std)
    return DataLoader(dataset, sampler=range(start, len(source)), collate_fn=dataset.collate, **_loader_settings(cfg))
