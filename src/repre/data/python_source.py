"""A dataset of your own code as an image source (data.name=python): images that are no files repre reads
(arrays, a database, DICOM, HDF5), or files read your own way.

data.source names a function as "module:function"; repre imports the module (from the Python path, the current
directory included) and calls `function(split, root)`, split "train" or "test" and root data.root (None when
unset), for each split it reads. The function returns a map-style dataset: `len(dataset)` and `dataset[i]` ->
(image, label) or an image alone. An image is a PIL image, an array HxW or HxWxC, or a tensor CxHxW (C 1, 3 or
4; uint8, or floats in [0, 1]); a label an int, or None (unlabelled). `dataset.classes`, where it
has one, names the labels in order (torchvision's datasets have it). Because the config names the function,
every command that reads a run's data (resume, evaluation, export, embed) calls it again.

The images are normalized with data.mean and data.std, or ImageNet's statistics when they are not set (as
folders are): a dataset's own statistics are not read, so that a checkpoint's normalization is known without
calling the function.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import numpy as np
import torch
from PIL import Image

from repre.config import DataConfig
from repre.data.folder import MEAN, STD, UnreadableImage, to_rgb_array
from repre.errors import UserError


def import_source(name: str) -> Any:
    """"module:function" -> the function; a UserError that says what could not be found."""
    module_name, _, attr = name.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:  # the `repre` script's path lacks the current folder
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"data.source={name}: cannot import {module_name} ({exc}); run from the folder that holds "
                        f"it or add that folder to PYTHONPATH") from None
    found: Any = module
    for part in attr.split("."):
        found = getattr(found, part, None)
    if not callable(found):
        raise UserError(f"data.source={name}: {module_name} has no function {attr}")
    return found


class PythonSource:
    """`dataset[i]` as repre's images: uint8 [3, H, W] and an int label (-1: none)."""

    mean, std = MEAN, STD  # ImageNet's, unless data.mean and data.std are set (the module's docstring)

    def __init__(self, dataset: Any, name: str, split: str) -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise UserError(f"data.source={name} gave {type(dataset).__name__} for the {split} split: return a "
                            "dataset with len() and [i] (e.g. a torch Dataset)")
        self.dataset, self.name = dataset, name
        self.classes = [str(c) for c in getattr(dataset, "classes", None) or []]
        self.num_classes = len(self.classes) or None

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            item = self.dataset[index]
        except OSError as exc:  # a file the dataset reads: left out and counted, as a folder's
            raise UnreadableImage(f"{self.name}[{index}]: {exc}") from None
        image, label = item if isinstance(item, tuple | list) else (item, None)
        return as_image(image, f"{self.name}[{index}]"), -1 if label is None else int(label)


def as_image(image: Any, where: str) -> torch.Tensor:
    """A PIL image, an array (HxW or HxWxC, numpy's and PIL's layout) or a tensor (HxW or CxHxW, torch's);
    uint8, or floats in [0, 1] -> uint8 [3, H, W]."""
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(to_rgb_array(image))).permute(2, 0, 1).contiguous()  # writable
    channels_last = not isinstance(image, torch.Tensor)
    x = torch.from_numpy(np.array(image)) if channels_last else image.detach().cpu()  # a copy: a memmap is read-only
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 3 and channels_last:
        x = x.permute(2, 0, 1)
    if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
        raise UserError(f"{where} is an image of shape {list(image.shape)}: give an array HxW or HxWxC, or a "
                        "tensor CxHxW, with 1, 3 or 4 channels")
    if x.is_floating_point():
        x = (x.float().clamp(0, 1) * 255).round()
    x = x.to(torch.uint8)[:3]  # RGBA: the colour channels
    return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x.contiguous()


def python_source(cfg: DataConfig, split: str) -> PythonSource:
    """The `split` ("train" or "test") of the dataset that data.source's function gives."""
    return PythonSource(import_source(cfg.source)(split, cfg.root), cfg.source, split)
