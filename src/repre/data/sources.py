"""Image sources: every dataset as indexable uint8 images with labels, their splits and their statistics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import torch

from repre.config import Config, DataConfig
from repre.core import dist
from repre.data.fashion_mnist import FashionMNIST
from repre.data.folder import ImageFolder, UnreadableImage, holds_images, warn_unreadable
from repre.data.synthetic import Synthetic
from repre.errors import UserError

log = logging.getLogger("repre")


class ImageSource(Protocol):
    """What every dataset provides: indexable uint8 [3, H, W] images with integer labels (-1: none). Sources
    read from files also have `path(index) -> str` (see `image_path`)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int | None

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[torch.Tensor, int]: ...


def _folder_split(root: str | None, split: str, name: str = "folder") -> Path:
    if not root:
        raise UserError(f"data.name={name} needs data.root: --set data.root=/path/to/{'shards' if name == 'shards' else 'images'}")
    base = Path(root)
    if name == "shards" and not base.is_dir():  # a shard or a pattern: training data only
        if split == "train":
            return base
        raise UserError(f"evaluation needs labelled splits: with data.name=shards, data.root must be a folder "
                        f"with train/ and val/ shards; {root} is a shard or a pattern")
    if not base.is_dir():
        what = "is a file, not a folder" if base.exists() else "does not exist"
        raise UserError(f"data.root {base} {what}; set data.root to a folder of images")
    if split == "train":
        if (base / "train").is_dir():
            return base / "train"
        held_out = [d for d in ("val", "test") if (base / d).is_dir()]
        if held_out:  # the root as the train split would train on the images evaluation tests with
            raise UserError(f"{base} has {held_out[0]}/ but no train/ folder: put the training images in "
                            f"{base}/train/ (or point data.root at a folder of training images only)")
        return base
    for name in ("val", "test"):
        if (base / name).is_dir():
            return base / name
    train = base / "train" if (base / "train").is_dir() else base
    if not any(p.is_dir() for p in train.iterdir()):  # no classes: holding images out would not give labels
        raise UserError(
            f"{base} has no val/ (or test/) folder, and its images no classes: k-NN, the linear probe and "
            f"fine-tuning read labelled images from {base}/train/<class>/... and {base}/val/<class>/...; "
            "without labels, `repre eval recon --set eval.split=val` holds out part of the training images, and "
            "`repre embed`, `neighbors` and `map` need none")
    raise UserError(
        f"{base} has no val/ (or test/) folder: evaluation and the test split read labelled images from "
        f"{base}/train/<class>/... and {base}/val/<class>/...; or hold out part of the training images with "
        "--set eval.split=val --set eval.val_size=N"
    )


STREAMS_EVALUATE = ("evaluation reads labelled images at random, which streamed shards ({root}) cannot give: "
                    "evaluate with --set data.root=<a local folder, or shards with train/ and val/> "
                    "--set data.shard_access=random")


def build_source(cfg: DataConfig, split: str, seed: int = 0) -> ImageSource:
    """The `split` ("train" or "test") of the configured dataset."""
    if cfg.name == "fashion-mnist":
        try:
            return FashionMNIST(cfg.root, split)
        except UserError:
            if cfg.root and holds_images(cfg.root):  # the default data.name on a folder of one's own images
                raise UserError(f"data.root {cfg.root} holds images, not the Fashion-MNIST files data.name=fashion-"
                                "mnist (the default) reads: add --set data.name=folder") from None
            raise
    if cfg.name == "synthetic":
        count = cfg.synthetic_train if split == "train" else cfg.synthetic_test
        return Synthetic(split, count, cfg.image_size, cfg.synthetic_classes, seed=seed)
    if cfg.name == "shards":
        from repre.data.shards import TarShards
        from repre.data.stream import StreamShards

        if cfg.streamed:
            if split != "train":
                raise UserError(STREAMS_EVALUATE.format(root=cfg.root))
            root = cfg.root if not Path(str(cfg.root)).is_dir() else str(_folder_split(cfg.root, split, "shards"))
            return StreamShards(root, cfg.stream_size)
        return TarShards(str(_folder_split(cfg.root, split, "shards")))
    if cfg.name == "folder":
        train_dir = _folder_split(cfg.root, "train")  # both splits label by the train split's class folders
        classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir()) if train_dir.is_dir() else None
        return ImageFolder(_folder_split(cfg.root, split), classes=classes)
    raise UserError(f"unknown data.name {cfg.name!r}")


def stats(cfg: DataConfig, source: ImageSource) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalization statistics: the configured ones, else the dataset's own."""
    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    return tuple(source.mean), tuple(source.std)


def pretraining_stats(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalization a run pre-trained with, without opening its data: `stats` of its dataset's class
    (folders and shards: ImageNet's)."""
    by_name = {"fashion-mnist": FashionMNIST, "synthetic": Synthetic}
    return stats(cfg, by_name.get(cfg.name, ImageFolder))


def first_readable(source: ImageSource, index: int, read):
    """`read(i)` for i = index, index + 1, ... (wrapping) until an image is readable: (result, images skipped)."""
    n = len(source)
    for skipped in range(n):
        try:
            return read((index + skipped) % n), skipped
        except UnreadableImage as exc:
            warn_unreadable(str(exc), "skipping unreadable image (replaced by the next one)")
    raise UserError(f"none of the {n} images of the dataset could be read (each is named in a warning above): "
                    "check data.root and data.name, and that the files are images PIL can open")


def load_or_replace(source: ImageSource, index: int) -> tuple[torch.Tensor, int, int]:
    """Load `index`; an unreadable image is replaced by the next index. Returns (image, label, skipped)."""
    (img, label), skipped = first_readable(source, index, source.load)
    return img, label, skipped


def image_path(source: ImageSource, index: int) -> str:
    """Where image `index` of `source` lives: a folder's file, a shard's `SHARD.tar:KEY`; "" for sources that
    are not files (Fashion-MNIST's arrays, generated images)."""
    path = getattr(source, "path", None)
    return path(index) if callable(path) else ""


class Selection:
    """The images of a source at `indices`, in that order."""

    def __init__(self, source: ImageSource, indices: torch.Tensor) -> None:
        self.source, self.indices = source, indices.tolist()
        self.mean, self.std, self.num_classes = source.mean, source.std, source.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.source.load(self.indices[index])

    def path(self, index: int) -> str:
        return image_path(self.source, self.indices[index])


def subset_of(source: ImageSource, count: int) -> Selection:
    """`count` images of `source` (all of them if it has fewer), the same for every run. Folders and shards
    often hold their images class by class, so their first `count` could be a few classes: a source read from
    files gives every (len / count)-th image, each class in proportion. Fashion-MNIST and the generated
    datasets are stored in random order: they give their first `count`, which is such a sample already."""
    size = len(source)
    count = min(count, size)
    from_files = size > 0 and bool(image_path(source, 0))
    index = torch.arange(count)
    return Selection(source, index * size // count if from_files else index)


def val_split(size: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), each sorted, of a train split of `size` images: a fixed random
    `val_size` of them (the same for every run and seed; class-sorted folders still give every class)."""
    if not 0 < val_size < size:
        raise UserError(f"eval.val_size={val_size} must be between 0 and the train split's {size} images: "
                        f"--set eval.val_size={max(1, size // 10)} holds out a tenth")
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(0))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def class_names(source: ImageSource) -> list[str] | None:
    """The names of a source's labels in label order (a folder's class folders, Fashion-MNIST's classes); None
    where its labels have none (or it has no labels)."""
    while isinstance(source, Selection):
        source = source.source
    names = getattr(source, "classes", None)
    return list(names) if names else None


def labelled(source: ImageSource, task: str) -> int:
    """The number of classes of `source`; exit 2 saying that `task` needs labels when it has fewer than two (one
    class: every prediction right, a score that says nothing; a folder nested one level too deep)."""
    if not source.num_classes:
        raise UserError(f"{task} needs labels: use a folder with class sub-folders in train/ and val/ (every image "
                        "in one; the sub-folder is its class)")
    if source.num_classes < 2:
        names = class_names(source) or ["one"]
        raise UserError(f"{task} needs at least 2 classes; these images have one ({names[0]}): a folder's classes "
                        "are the sub-folders right under train/ and val/ (or under data.root)")
    return source.num_classes


def eval_source(cfg: Config, split: str) -> ImageSource:
    """The labelled `split` ("train" or "test") an evaluation uses. With eval.split=val the evaluation never
    sees the test split: "test" is a fixed random eval.val_size of the train images, "train" the others."""
    if cfg.data.streamed:
        raise UserError(STREAMS_EVALUATE.format(root=cfg.data.root))
    if cfg.eval.split == "test":
        return build_source(cfg.data, split, seed=cfg.train.seed)
    source = build_source(cfg.data, "train", seed=cfg.train.seed)
    train_idx, val_idx = val_split(len(source), cfg.eval.val_size)
    return Selection(source, train_idx if split == "train" else val_idx)


def train_source(cfg: Config) -> ImageSource:
    source = build_source(cfg.data, "train", seed=cfg.train.seed)
    if cfg.data.subset and cfg.data.subset > len(source) and dist.is_main():
        log.warning("data.subset=%d, but the training split holds %d images: all of them are used",
                    cfg.data.subset, len(source))
    return subset_of(source, cfg.data.subset) if cfg.data.subset else source
