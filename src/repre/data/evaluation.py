"""The loaders of evaluation: resize and centre crop, no augmentation, in a fixed order.

`eval_loader` replaces an unreadable image by the next one (a batch is never short); `indexed_loader` (what
`repre embed` reads) reports it and leaves it out, and says which source index each image is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from repre.config import Config, DataConfig
from repre.data.fashion_mnist import FashionMNIST
from repre.data.folder import UnreadableImage
from repre.data.pipeline import resolve_workers
from repre.data.sources import ImageSource, eval_source, load_or_replace, pretraining_stats, stats, subset_of
from repre.data.views import normalize

CROP_PCT = 0.875  # the centre crop's share of the resized short side (224 of 256), as timm's and DINO's evaluation


def centre_view(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, S, S], what evaluation shows the encoder: the short side resized (to S, or
    to floor(S / CROP_PCT) when it is larger than S, as timm's evaluation transform), then the centre S x S."""
    if img.shape[-2:] != (size, size):
        short = size if min(img.shape[-2:]) <= size else math.floor(size / CROP_PCT)
        img = TF.center_crop(TF.resize(img, [short], antialias=True), [size, size])
    return img


def timm_preprocessing(cfg: DataConfig) -> dict[str, Any]:
    """`centre_view` and the normalization of a run's data, in the terms of timm's `pretrained_cfg`: an
    exported encoder carries them, and `timm.data.resolve_data_config({}, model=model)` then builds the
    transform evaluation applies (`crop_pct` 1, the whole image resized, where every image of the dataset is
    square and no larger than the input: Fashion-MNIST's 28 px items, the generated scenes and images)."""
    mean, std = pretraining_stats(cfg)
    side = {"fashion-mnist": FashionMNIST.side, "fashion-scenes": cfg.scene_size, "synthetic": cfg.image_size}
    whole = side.get(cfg.name, cfg.image_size + 1) <= cfg.image_size
    return {"input_size": [3, cfg.image_size, cfg.image_size], "interpolation": "bilinear", "crop_mode": "center",
            "crop_pct": 1.0 if whole else CROP_PCT, "mean": list(mean), "std": list(std)}


class EvalDataset(Dataset):
    """index -> (normalized float [3, S, S], label): resize then centre crop, no augmentation."""

    def __init__(self, source: ImageSource, size: int, mean, std) -> None:
        self.source, self.size, self.mean, self.std = source, size, mean, std

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label, _ = load_or_replace(self.source, index)
        return self.prepare(img), label

    def prepare(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] -> normalized float [3, S, S] (`centre_view`, normalized)."""
        return normalize(centre_view(img, self.size)[None].float() / 255, self.mean, self.std)[0]


@dataclass
class IndexedBatch:
    """What an `indexed_loader` batch holds beside its images."""

    indices: torch.Tensor  # [B] int64: the source index of each image of the batch
    labels: torch.Tensor  # [B] int64 (-1: none)
    unreadable: list[tuple[int, str]]  # (source index, why) of the images left out
    end: int  # one past the batch's last source index, readable or not


class IndexedEvalDataset(EvalDataset):
    """index -> (normalized float [3, S, S] or None, label, index, why it is unreadable or None): an unreadable
    image is reported, not replaced."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int, str | None]:
        try:
            img, label = self.source.load(index)
        except UnreadableImage as exc:
            return None, -1, index, str(exc)
        return self.prepare(img), label, index, None

    def collate(self, items: list) -> tuple[torch.Tensor, IndexedBatch]:
        """Items -> (the readable images [B, 3, S, S], B possibly 0; their IndexedBatch)."""
        readable = [it for it in items if it[0] is not None]
        x = torch.stack([it[0] for it in readable]) if readable else torch.empty(0, 3, self.size, self.size)
        batch = IndexedBatch(
            indices=torch.tensor([it[2] for it in readable], dtype=torch.int64),
            labels=torch.tensor([it[1] for it in readable], dtype=torch.int64),
            unreadable=[(it[2], it[3]) for it in items if it[0] is None],
            end=max(it[2] for it in items) + 1,
        )
        return x, batch


def _loader(cfg: Config, dataset: EvalDataset, **kw) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.eval.batch_size,
        num_workers=resolve_workers(cfg.train.num_workers),
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG alone (k-NN during training)
        **kw,
    )


def eval_loader(cfg: Config, split: str, subset: int | None) -> DataLoader:
    """Deterministic loader over `split` (see `eval_source`) for feature extraction."""
    source = eval_source(cfg, split)
    if subset:
        source = subset_of(source, subset)
    mean, std = stats(cfg.data, source)
    return _loader(cfg, EvalDataset(source, cfg.data.image_size, mean, std), shuffle=False)


def indexed_loader(cfg: Config, source: ImageSource, start: int = 0) -> DataLoader:
    """The images of `source` from index `start` to its end, in order, as evaluation sees them: batches of
    (x [B, 3, S, S], IndexedBatch), an unreadable image left out of x and named in `unreadable`."""
    mean, std = stats(cfg.data, source)
    dataset = IndexedEvalDataset(source, cfg.data.image_size, mean, std)
    return _loader(cfg, dataset, sampler=range(start, len(source)), collate_fn=dataset.collate)
