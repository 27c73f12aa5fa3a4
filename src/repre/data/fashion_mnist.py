"""Fashion-MNIST from its four IDX `.gz` files, or the same files uncompressed (Xiao, Rasul, Vollgraf 2017; MIT
licence, Zalando Research)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from repre.errors import UserError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = (0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)


def _missing_message(root: Path, missing: list[str]) -> str:
    return (
        f"Fashion-MNIST not found: {', '.join(missing)} missing in {root}.\n"
        "  On Debian/Ubuntu (as root): apt-get install -y dataset-fashion-mnist   "
        f"(installs the files in {DEFAULT_ROOT})\n"
        "  Elsewhere: download the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,\n"
        "  t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from\n"
        "  github.com/zalandoresearch/fashion-mnist into one folder and pass --set data.root=FOLDER."
    )


def _idx_file(folder: Path, name: str) -> Path | None:
    """The file `name` (.gz) in `folder`, or the same file uncompressed (as torchvision's `raw/` folder holds it
    beside the archive), or None."""
    return next((p for p in (folder / name, folder / name.removesuffix(".gz")) if p.is_file()), None)


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
        data = fh.read()
    if len(data) < 4 or data[2] != 0x08 or data[3] != expected_dims:
        raise UserError(f"{path} is not an IDX file of unsigned bytes with {expected_dims} dimensions")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * expected_dims)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {body.size}")
    return body.reshape(shape)


class FashionMNIST:
    """One split as an image source: `load(i) -> (uint8 [3, 28, 28], label)` (gray replicated to 3 channels)."""

    mean, std = MEAN, STD
    side = 28  # every image's
    classes = CLASSES

    def __init__(self, root: str | None, split: str) -> None:
        folder = Path(root or DEFAULT_ROOT)
        names = FILES["train" if split == "train" else "test"]
        found = [_idx_file(folder, n) for n in names]
        missing = [n for n, f in zip(names, found, strict=True) if f is None]
        files = [f for f in found if f is not None]
        if missing:
            raise UserError(_missing_message(folder, missing))
        try:
            self.images = torch.from_numpy(_read_idx(files[0], 3).copy())
            self.labels = torch.from_numpy(_read_idx(files[1], 1).astype(np.int64))
        except (OSError, EOFError) as exc:
            raise UserError(f"cannot read Fashion-MNIST in {folder}: {exc}; reinstall the files") from None
        if len(self.images) != len(self.labels):
            raise UserError(f"Fashion-MNIST in {folder}: {len(self.images)} images but {len(self.labels)} labels; "
                            "the images and labels files come from different sets: reinstall the four files")
        self.num_classes = len(CLASSES)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].expand(3, -1, -1), int(self.labels[index])
