"""The loaders of evaluation: resize and centre crop, no augmentation, in a fixed order."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from repre.config import Config
from repre.data.pipeline import resolve_workers
from repre.data.sources import FirstN, ImageSource, eval_source, load_or_replace, stats
from repre.data.views import normalize


class EvalDataset(Dataset):
    """index -> (normalized float [3, S, S], label): resize then centre crop, no augmentation."""

    def __init__(self, source: ImageSource, size: int, mean, std) -> None:
        self.source, self.size, self.mean, self.std = source, size, mean, std

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label, _ = load_or_replace(self.source, index)
        if img.shape[-2:] != (self.size, self.size):
            short = self.size if min(img.shape[-2:]) <= self.size else round(self.size / 0.875)
            img = TF.center_crop(TF.resize(img, [short], antialias=True), [self.size, self.size])
        return normalize(img[None].float() / 255, self.mean, self.std)[0], label


def eval_loader(cfg: Config, split: str, subset: int | None) -> DataLoader:
    """Deterministic loader over `split` (see `eval_source`) for feature extraction."""
    source = eval_source(cfg, split)
    if subset:
        source = FirstN(source, subset)
    mean, std = stats(cfg.data, source)
    workers = resolve_workers(cfg.train.num_workers)
    return DataLoader(
        EvalDataset(source, cfg.data.image_size, mean, std),
        batch_size=cfg.eval.batch_size,
        shuffle=False,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG alone (k-NN during training)
    )
