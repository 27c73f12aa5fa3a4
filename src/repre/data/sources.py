"""Image sources: every dataset as indexable uint8 images with labels, and their statistics. Which of a
source's images a run or an evaluation reads (subsets, splits) is `repre.data.splits`."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import torch

from repre.config import REMOTE_ROOTS, URL, DataConfig
from repre.data.fashion_mnist import DEFAULT_ROOT, FashionMNIST
from repre.data.folder import (
    HIDDEN,
    ImageFolder,
    UnreadableImage,
    class_folders,
    holds_images,
    loose_images,
    warn_once,
    warn_unreadable,
)
from repre.data.synthetic import Synthetic
from repre.errors import NoTestSplit, UserError


class ImageSource(Protocol):
    """What every dataset provides: indexable uint8 [3, H, W] images with integer labels (-1: none). Sources
    read from files also have `path(index) -> str` (see `image_path`) and may be `EncodedImages`; sources
    whose labels have names hold them in `classes` (see `class_names`)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    @property
    def num_classes(self) -> int | None: ...

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[torch.Tensor, int]: ...


@runtime_checkable
class EncodedImages(Protocol):
    """A source whose images can leave undecoded (a folder's files, a shard's members): `encoded(index)` ->
    (the file's bytes, its name for messages, its label); raises UnreadableImage. The data pipeline sends
    such bytes to the device when it decodes JPEGs there."""

    def encoded(self, index: int) -> tuple[bytes, str, int]: ...


# a shard named for a held-out split: val-000000.tar, in1k-validation-00.tar, test_3.tar
HELD_OUT = re.compile(r"(^|[-_.])(val|valid|validation|test)([-_.]|\d|$)")


# a root's split folders (the first found of each)
TRAIN_DIRS = ("train", "training")
HELD_OUT_DIRS = ("val", "valid", "validation", "test")


def _split_folders(base: Path) -> dict[str, Path]:
    """The split folders in `base` by their name in lower case, whatever their case (`Train/`, `TEST/`: a
    case-insensitive file system finds them too), an exact name first; one pass over `base`."""
    with os.scandir(base) as entries:
        found = sorted((e.name != e.name.lower(), e.name) for e in entries
                       if e.name.lower() in TRAIN_DIRS + HELD_OUT_DIRS and e.is_dir())
    folders: dict[str, Path] = {}
    for _, name in found:
        folders.setdefault(name.lower(), base / name)
    return folders


def _split_dir(base: Path, names: tuple[str, ...]) -> Path | None:
    """The first of `names` that is a folder in `base` (`_split_folders`), or None. With a training and a
    held-out folder both there, the root is split (other folders beside them, `lost+found` or a devkit, are left
    alone); one of them alone beside other folders of images is refused: a class named `train` (Pascal VOC's,
    COCO's) would otherwise be read as the whole training split."""
    folders = _split_folders(base)
    found = next((folders[n] for n in names if n in folders), None)
    if found is None:
        return None
    if set(TRAIN_DIRS) & set(folders) and set(HELD_OUT_DIRS) & set(folders):
        return found
    splits = TRAIN_DIRS + HELD_OUT_DIRS
    others = sorted(d.name for d in base.iterdir() if d.is_dir() and d.name.lower() not in splits
                    and not HIDDEN.match(d.name) and holds_images(d, 1))
    if others:
        raise UserError(f"{base} holds {found.name}/ beside other folders ({', '.join(others[:3])}"
                        f"{', ...' if len(others) > 3 else ''}): read as splits, train/ and val/ (or test/) stand "
                        f"alone; read as classes, a class named {found.name} would be taken for a split: put the "
                        f"class folders in {base}/train/ (and held-out ones in {base}/val/), or rename that class")
    return found


def _say_unread_held_out(base: Path, held: Path) -> None:
    """Name the held-out folders of `base` that evaluation does not read (it reads `held`, the first)."""
    folders = _split_folders(base)
    unread = [folders[n].name for n in HELD_OUT_DIRS if n in folders and folders[n] != held]
    if unread:
        warn_once(("unread held-out", str(base)), "%s holds %s/ and %s/: evaluation reads %s/, the first of %s/; to "
                  "evaluate on %s/, point data.root at a folder of two links, train -> %s and val -> %s", base,
                  held.name, "/ and ".join(unread), held.name, "/, ".join(HELD_OUT_DIRS), unread[0],
                  _split_dir(base, TRAIN_DIRS) or base / "train", base / unread[0])


def held_out_shards(base: Path) -> list[str]:
    """The names of the shards under `base` that training would read and a held-out split's name marks
    (val-0000.tar, VAL-0000.TAR, in1k-validation-00.tar)."""
    from repre.data.shards import shard_files

    return [p.name for p in shard_files(base)[0] if HELD_OUT.search(p.name[: -len(".tar")].lower())]


def _given_root(root: str | None, name: str, streamed: bool = False) -> str:
    """data.root, which data.name=`name` needs: refused when not given, or when a URL is given where it is read
    as a local path (`streamed`: shards read as streams, which take http(s):// and pipe:)."""
    if not root:
        folder = "shards" if name == "shards" else "images"
        raise UserError(f"data.name={name} needs data.root: --set data.root=/path/to/{folder}")
    remote = root.startswith(REMOTE_ROOTS)
    if not (remote or URL.match(root)) or (name == "shards" and streamed and remote):
        return root
    if name != "shards":
        raise UserError(f"data.root={root}: data.name={name} reads a local or mounted folder, not a URL; mount it "
                        "(s3fs, gcsfuse, ...) or copy the images, or pack them in tar shards and stream those "
                        "(data.name=shards)")
    if remote:
        raise UserError(f"data.root={root} is read as a stream, not with random access (data.shard_access=random): "
                        "leave data.shard_access at auto, or give the shards' local or mounted path")
    scheme = root.split("://")[0]
    pattern = root if root.lower().endswith(".tar") else f"{scheme}://BUCKET/train-{{000000..000099}}.tar"
    raise UserError(f"data.root={root}: shards are streamed from http(s):// URLs and pipe: commands, not from "
                    f"{scheme}:// ones; give the command that writes each shard to its standard output, with the "
                    f"shards' names as a pattern, e.g. --set 'data.root=pipe:aws s3 cp {pattern} -' (gs://: "
                    "pipe:gsutil cat), or the shards' local or mounted path")


def _folder_split(root: str | None, split: str, name: str = "folder") -> Path:
    root = _given_root(root, name)
    base = Path(root)
    if name == "shards" and not base.is_dir():  # a shard or a pattern: training data only
        if split == "train":
            return base
        raise NoTestSplit(f"{root} is a shard or a pattern, without a held-out split: evaluation reads labelled "
                          "shards from a folder's val/ (training from its train/): give data.root such a folder, "
                          "or hold out part of the training images with --set eval.split=val --set "
                          "eval.val_size=N", root)
    if not base.is_dir():
        what = "is a file, not a folder" if base.exists() else "does not exist"
        raise UserError(f"data.root {base} {what}; set data.root to a folder of images")
    train, held = _split_dir(base, TRAIN_DIRS), _split_dir(base, HELD_OUT_DIRS)
    if split == "train":
        if train is not None:
            return train
        if held is not None:  # the root as the train split would train on the images evaluation tests with
            raise UserError(f"{base} has {held.name}/ but no train/ folder: put the training images in "
                            f"{base}/train/ (or point data.root at a folder of training images only)")
        held_out = held_out_shards(base) if name == "shards" else []
        if held_out:  # every .tar under the root would be trained on
            raise UserError(f"{base} holds {held_out[0]} beside the training shards, and training reads every "
                            f".tar there: put them in {base}/train/ and {base}/val/ (evaluation reads val/), or "
                            "point data.root at the training shards alone (a pattern such as "
                            f"{base}/train-{{000000..000099}}.tar)")
        return base
    if held is not None:
        _say_unread_held_out(base, held)
        return held
    train = train or base
    if base.name.lower() in TRAIN_DIRS and set(HELD_OUT_DIRS) & set(_split_folders(base.parent)):
        raise NoTestSplit(f"data.root {base} is a training split itself: point data.root at {base.parent}, which "
                          f"holds it and its held-out split", str(base))
    if name == "shards":
        raise NoTestSplit(f"{base} has no val/ (or test/) shards: evaluation and the test split read labelled "
                          f"shards from {base}/val/ (training from {base}/train/); or hold out part of the training "
                          "images with --set eval.split=val --set eval.val_size=N", str(base))
    if loose_images(train) or not any(p.is_dir() for p in train.iterdir()):  # no classes (`ImageFolder`'s
        # rule): holding images out would not give labels
        raise NoTestSplit(
            f"{base} has no val/ (or test/) folder, and its images no classes: k-NN, the linear probe and "
            f"fine-tuning read labelled images from {base}/train/<class>/... and {base}/val/<class>/...; "
            "without labels, `repre eval recon --set eval.split=val --set eval.val_size=N` measures the "
            "reconstructions of N training images (which pre-training read), and `repre embed`, `neighbors` and "
            "`map` need none", str(base))
    raise NoTestSplit(
        f"{base} has no val/ (or test/) folder: evaluation and the test split read labelled images from "
        f"{base}/train/<class>/... and {base}/val/<class>/...; or hold out part of the training images with "
        "--set eval.split=val --set eval.val_size=N", str(base)
    )


STREAMS_EVALUATE = ("evaluation reads labelled images at random, which streamed shards ({root}) cannot give: "
                    "evaluate with --set data.root=<a local folder, or shards with train/ and val/> "
                    "--set data.shard_access=random")


def check_out_of_images(out: Path, cfg: DataConfig) -> None:
    """Refuse a run directory inside a folder of images the run reads (data.root, or its train/ and held-out
    folders where it has them): every image under it is read, so the run's pictures (recon.png, eval/) would
    become images of the dataset (and a class folder of their own) from the next epoch, a resume or an
    evaluation on."""
    if cfg.name != "folder" or not cfg.root or URL.match(cfg.root) or cfg.root.startswith(REMOTE_ROOTS):
        return
    base = Path(cfg.root).expanduser()
    if not base.is_dir():  # said when the data are read
        return
    try:
        splits = [_split_dir(base, TRAIN_DIRS), _split_dir(base, HELD_OUT_DIRS)]
    except UserError:  # a root the reading refuses: said when the data are read
        return
    read = [f for f in splits if f is not None] or [base]  # the split folders, or the root
    read += [p for f in read for p in f.iterdir() if p.is_symlink() and p.is_dir()]  # class folders elsewhere
    run = out.expanduser().resolve()
    folder = next((f for f in read if run == f.resolve() or f.resolve() in run.parents), None)
    if folder is not None:
        raise UserError(f"--out {out} is inside {folder}, whose every image data.root={cfg.root} reads: the run's "
                        "pictures (recon.png, eval/) would become images of the dataset; choose an --out outside it "
                        "(a run moved elsewhere resumes there)")


def build_source(cfg: DataConfig, split: str, seed: int = 0) -> ImageSource:
    """The `split` ("train" or "test") of the configured dataset."""
    if cfg.name == "fashion-mnist":
        try:
            return FashionMNIST(cfg.root, split)
        except UserError:
            if cfg.root and holds_images(cfg.root, 3):  # the default data.name on a folder of images (train/CLASS/SUB/)
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
            root = _given_root(cfg.root, "shards", streamed=True)  # a URL stays a string: a Path would join its "//"
            if split != "train":
                raise UserError(STREAMS_EVALUATE.format(root=root))
            return StreamShards(root if not Path(root).is_dir() else str(_folder_split(root, split, "shards")),
                                cfg.stream_size)
        return TarShards(str(_folder_split(cfg.root, split, "shards")))
    if cfg.name == "folder":
        train_dir = _folder_split(cfg.root, "train")  # both splits label by the train split's class folders
        classes = class_folders(train_dir) if train_dir.is_dir() else None
        return ImageFolder(_folder_split(cfg.root, split), classes=classes)
    if cfg.name == "python":
        from repre.data.python_source import python_source

        return python_source(cfg, split)
    raise UserError(f"unknown data.name {cfg.name!r}")


def root_named(cfg: DataConfig) -> str | None:
    """The folder `cfg` reads, as a message names it: data.root, or Fashion-MNIST's default location for none."""
    return cfg.root or (DEFAULT_ROOT if cfg.name == "fashion-mnist" else None)


def data_code(cfg: DataConfig) -> dict[str, str] | None:
    """The code that makes the images, as a checkpoint records it: data.name=python's module file and its
    SHA-256 ({"file", "sha256"}); None for the other sources (repre's own code reads them)."""
    if cfg.name != "python":
        return None
    from repre.data.python_source import code_identity

    assert cfg.source is not None  # `validate` refuses data.name=python without it
    return code_identity(cfg.source)


def check_data_code(cfg: DataConfig, recorded: dict[str, str] | None, run: str | Path) -> None:
    """Warn where the code that makes the images is not what `run` `recorded` (`data_code`)."""
    if cfg.name == "python":
        from repre.data.python_source import check_code

        assert cfg.source is not None  # `validate` refuses data.name=python without it
        check_code(cfg.source, recorded, run)


def stats(cfg: DataConfig, source: ImageSource | type[ImageSource]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalization statistics: the configured ones, else the dataset's own (those of its class)."""
    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    return tuple(source.mean), tuple(source.std)


def pretraining_stats(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalization a run pre-trained with, without opening its data: `stats` of its dataset's class
    (folders and shards: ImageNet's)."""
    by_name: dict[str, type[ImageSource]] = {"fashion-mnist": FashionMNIST, "synthetic": Synthetic}
    return stats(cfg, by_name.get(cfg.name, ImageFolder))


T = TypeVar("T")


REPLACEMENT_TRIES = 100  # images drawn to replace an unreadable one before the data is called unreadable


def first_readable(source: ImageSource, index: int, read: Callable[[int], T]) -> tuple[T, int]:
    """`read(index)`, or where that image is unreadable `read(i)` for images i drawn at random (a draw fixed by
    `index`: a resumed run replaces as the first did) until one is readable: (result, images skipped). Drawn,
    not the next index: a run of unreadable files in a row (a failed copy) would all become the one image after
    it. After REPLACEMENT_TRIES unreadable draws (every image, in a smaller dataset) the data is refused."""
    try:
        return read(index), 0
    except UnreadableImage as exc:
        warn_unreadable(str(exc), "skipping unreadable image (replaced by another, drawn at random)")
    n = len(source)
    others = [i for i in random.Random(index).sample(range(n), min(n, REPLACEMENT_TRIES + 1)) if i != index]
    for skipped, i in enumerate(others[:REPLACEMENT_TRIES], start=1):
        try:
            return read(i), skipped
        except UnreadableImage as exc:
            warn_unreadable(str(exc), "skipping unreadable image (replaced by another, drawn at random)")
    if n <= REPLACEMENT_TRIES + 1:
        raise UserError(f"none of the {n} images of the dataset could be read (see the warnings above): "
                        "check data.root and data.name, and that the files are images PIL can open")
    raise UserError(f"image {index} and {REPLACEMENT_TRIES} others drawn to replace it could not be read (see the "
                    f"warnings above): most of the dataset's {n:,} files are not images PIL can open (Git LFS "
                    "pointers, an interrupted copy?); check data.root, or mend the files")


def load_or_replace(source: ImageSource, index: int) -> tuple[torch.Tensor, int, int]:
    """Load `index`; an unreadable image is replaced (`first_readable`). Returns (image, label, skipped)."""
    (img, label), skipped = first_readable(source, index, source.load)
    return img, label, skipped


def image_path(source: ImageSource, index: int) -> str:
    """Where image `index` of `source` lives: a folder's file, a shard's `SHARD.tar:KEY`; "" for sources that
    are not files (Fashion-MNIST's arrays, generated images)."""
    path = getattr(source, "path", None)
    return path(index) if callable(path) else ""
