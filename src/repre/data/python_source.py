"""A dataset of your own code as an image source (data.name=python): images that are no files repre reads
(arrays, a database, DICOM), or files read your own way.

data.source names a function as "module:function"; repre imports the module (from the Python path; the
current folder is added to its end) and calls `function(split, root)`, split "train" or "test" and root
data.root (None when unset), once a process for each split it reads. The function returns a map-style dataset:
`len(dataset)` and `dataset[i]` -> (image, label, ...) or an image alone. An image is a PIL image, an array HxW
or HxWxC, or a tensor CxHxW (C 1, 3 or 4): uint8, uint16 (scaled to 8 bits, as a 16-bit PNG is), integers in
0..255, or floats in [0, 1]. A label is an int in 0..len(classes)-1, where `dataset.classes` names the labels
(torchvision's datasets have it); a dataset without `classes` has no labels.

The config names the function, so every command that reads a run's data (resume, evaluation, export, embed)
calls it again: reading a run of data.name=python runs that code. The module must be a file of your own,
not part of Python or of an installed package, so a run's config cannot make a command call any library
function with its arguments; read runs whose code you trust. A checkpoint records the module's file and its
SHA-256 (`code_identity`): a command that reads the run where that name holds other code (another file, or
the file changed since) says so (the images may not be those the run trained on).

The images are normalized with data.mean and data.std, or ImageNet's statistics when they are not set (as
folders are): a dataset's own statistics are not read, so that a checkpoint's normalization is known without
calling the function.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import multiprocessing
import os
import sys
import sysconfig
import traceback
from collections import OrderedDict
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from repre.config import DataConfig
from repre.data.folder import MEAN, STD, UnreadableImage, to_rgb_array
from repre.errors import UserError

log = logging.getLogger("repre")


def _library_folders() -> list[Path]:
    """Python's own library and the installed packages' folders."""
    paths = sysconfig.get_paths()
    return [Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]


def _current_folder_on_path() -> None:
    """The current folder at the end of the Python path, where a module of your own is looked for: the `repre`
    script's path lacks it. It stays there: data workers started by spawn import the module again."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())


def _check_own(name: str) -> None:
    """A UserError unless data.source `name`'s top module is a file or folder of your own: found on the Python
    path (not imported), outside Python's library and the installed packages."""
    _current_folder_on_path()
    top = name.partition(":")[0].split(".")[0]
    if top == "__main__":  # a notebook's or script's own: data workers and later commands cannot import it
        raise UserError(f"data.source={name}: __main__ (a notebook or the script run) is no module other "
                        "processes can import; put the function in a file of its own, e.g. mydata.py, and give "
                        "data.source=mydata:FUNCTION")
    if not top:
        raise UserError(f"data.source={name}: no module name before the function (a relative name); give "
                        "MODULE:FUNCTION, e.g. mydata:scans")
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise UserError(f"data.source={name}: no module {top} on the Python path; run from the folder that holds "
                        f"{top}.py or add that folder to PYTHONPATH")
    locations = list(spec.submodule_search_locations or [])  # a folder without __init__.py has no origin
    found_at = spec.origin if spec.origin and spec.has_location else (locations[0] if locations else None)
    origin = Path(found_at).resolve() if found_at else None
    if origin is None or any(origin.is_relative_to(folder) for folder in _library_folders()):
        where = f"at {origin}" if origin else "built into Python"
        raise UserError(f"data.source={name}: {top} is a module of Python or of an installed package ({where}); "
                        "data.source names a function of your own code (rename a file of yours that has this name)")


def raised(exc: BaseException) -> str:
    """"KeyError: 'k' (at /src/mydata.py:12 in scans: return x[k])": `exc` and the innermost line of your code
    that raised it (not repre's, Python's or an installed package's), where there is one."""
    if isinstance(exc, SyntaxError) and exc.filename:
        text = (exc.text or "").strip()
        return f"{type(exc).__name__}: {exc.msg} (at {exc.filename}:{exc.lineno}{': ' + text if text else ''})"
    return f"{type(exc).__name__}: {exc}{_your_line(exc)}"


def _your_line(exc: BaseException) -> str:
    not_yours = [Path(__file__).resolve().parents[1], *_library_folders()]
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename)
        if path.is_file() and not any(path.resolve().is_relative_to(f) for f in not_yours):
            return f" (at {frame.filename}:{frame.lineno} in {frame.name}{': ' + frame.line if frame.line else ''})"
    return ""


def import_source(name: str) -> Callable[[str, str | None], Any]:
    """"module:function" -> the function, from a module of your own (`_check_own`); a UserError that says what
    could not be found or may not be called, or where importing it failed."""
    _check_own(name)
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, and whatever the module's own code raises (SyntaxError, NameError, ...)
        raise UserError(f"data.source={name}: importing {module_name} failed: {raised(exc)}") from None
    found: Any = module
    for part in attr.split("."):
        found = getattr(found, part, None)
    if not callable(found):
        raise UserError(f"data.source={name}: {module_name} ({module.__file__}) has no function {attr}")
    return found


def code_identity(source: str) -> dict[str, str] | None:
    """Which file data.source's module is, and its SHA-256: {"file", "sha256"}; None where it is no file of
    your own (importing it says why)."""
    try:
        _check_own(source)
        spec = importlib.util.find_spec(source.partition(":")[0])  # a package's parents are imported
    except (UserError, ImportError, ValueError):
        return None
    if spec is None or not spec.has_location or not spec.origin or not os.path.isfile(spec.origin):
        return None
    path = Path(spec.origin).resolve()
    return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def check_code(source: str, recorded: dict[str, str] | None, run: str | Path) -> None:
    """Warn where data.source's module holds other code than the file `recorded` for `run` (another file of
    that name, or the same file changed since): its images may not be those the run was trained on. The same
    code elsewhere (a moved or copied checkout) is no news."""
    now = code_identity(source)
    if not recorded or now is None or now["sha256"] == recorded.get("sha256"):
        return
    was = f"{recorded['file']} (sha256 {recorded['sha256'][:12]})"
    if now["file"] == recorded["file"]:
        why = f"{now['file']} has changed since (sha256 {recorded['sha256'][:12]} -> {now['sha256'][:12]})"
    else:
        why = f"here it is {now['file']} (sha256 {now['sha256'][:12]})"
    log.warning("data.source=%s: %s read the module %s; %s: the images may not be those it was trained on",
                source, run, was, why)


class PythonSource:
    """`dataset[i]` as repre's images: uint8 [3, H, W] and an int label (-1: none)."""

    mean, std = MEAN, STD  # ImageNet's, unless data.mean and data.std are set (the module's docstring)
    class_sorted = True  # its images may come class by class, as a folder's: a subset spreads over them

    def __init__(self, dataset: Any, name: str, split: str) -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise UserError(f"data.source={name} gave {type(dataset).__name__} for the {split} split: return a "
                            "dataset with len() and [i] (e.g. a torch Dataset)")
        try:
            size = len(dataset)
        except Exception as exc:  # your code's bug, said where it is (len() of None: a TypeError)
            raise UserError(f"len() of data.source={name}'s {split} dataset raised {raised(exc)}; mend its "
                            "__len__ to return the number of images") from exc
        if size == 0:
            raise UserError(f"data.source={name} gave an empty dataset for the {split} split: return its images "
                            "(does data.root point at them?)")
        self.dataset, self.name = dataset, name
        classes = getattr(dataset, "classes", None)
        self.classes = [str(c) for c in classes] if classes is not None else []
        self.num_classes = len(self.classes) or None
        try:  # an item of a form repre cannot read is said now, before a model is built and workers start
            self.load(0)
        except UnreadableImage:
            pass
        self._pickle_checked = False  # whether the dataset was pickled once already (`__getstate__`)

    def __getstate__(self) -> dict[str, Any]:
        """What a data worker started by spawn or forkserver (macOS, Windows; Linux from Python 3.14) receives,
        pickled: a dataset that does not pickle (an open file, a lock, a connection) is said in words, once, where
        torch's traceback would name neither it nor what to do. Workers started by fork pickle nothing."""
        if not self._pickle_checked:
            try:
                ForkingPickler(_Discarded()).dump(self.dataset)  # the bytes are not kept: no second copy
            except Exception as exc:
                method = multiprocessing.get_start_method()
                raise UserError(f"data.source={self.name}'s dataset cannot be sent to the data workers, which "
                                f"start by {method} here and receive it pickled: {raised(exc)}; open files, "
                                "connections and locks on first use in __getitem__ rather than in __init__, or "
                                "--set train.num_workers=0") from exc
            self._pickle_checked = True
        return self.__dict__

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        where = f"{self.name}[{index}]"
        try:
            item = self.dataset[index]
        except OSError as exc:  # a file the dataset reads: left out and counted, as a folder's
            raise UnreadableImage(f"{where}: {exc}") from None
        except Exception as exc:  # a bug in the dataset: said as such, where it is (not a data worker's traceback)
            raise UserError(f"{where} raised {raised(exc)}; mend the dataset, or "
                            "raise OSError for an image to be left out and counted") from exc
        if isinstance(item, dict | str | bytes):
            raise UserError(f"{where} is of type {type(item).__name__}: return (image, label) or an image")
        image, label = (item[0], item[1]) if isinstance(item, tuple | list) and len(item) >= 2 else (item, None)
        return as_image(image, where), self.label(label, where)

    def label(self, label: Any, where: str) -> int:
        """An item's label as an index of `classes` (-1 where the dataset has none)."""
        if not self.num_classes:
            return -1
        try:
            index = int(label)
            whole = bool(index == label)  # 1.7 is no class (nor "1"): not cut to one
        except (TypeError, ValueError, OverflowError, RuntimeError):  # inf; a tensor of several values
            index, whole = -1, False
        if not whole or not 0 <= index < self.num_classes:
            raise UserError(f"{where} has label {label!r}; the dataset's classes ({self.num_classes}: "
                            f"{', '.join(self.classes[:5])}{', ...' if self.num_classes > 5 else ''}) need an int "
                            f"from 0 to {self.num_classes - 1}")
        return index


class _Discarded:
    """A file that keeps nothing written to it (`PythonSource.__getstate__`'s check)."""

    def write(self, data: bytes) -> int:
        return len(data)


def as_image(image: Any, where: str) -> torch.Tensor:
    """A PIL image, an array (HxW or HxWxC, numpy's and PIL's layout) or a tensor (HxW or CxHxW, torch's) ->
    uint8 [3, H, W]; pixel values as the module's docstring says."""
    if isinstance(image, Image.Image):
        try:  # a file opened lazily (`Image.open` in __getitem__) is decoded here: one cut short is unreadable
            image.load()
        except OSError as exc:
            raise UnreadableImage(f"{where}: {exc}") from None
        # float and 32-bit images read as the arrays they hold: one rule for every item (a folder's files are
        # read by their range, 8 or 16 bits, or beyond it scaled by their own maximum, a contrast that would
        # change from one item to the next)
        if image.mode in ("F", "I"):
            return as_image(np.asarray(image), where)
        return torch.from_numpy(np.array(to_rgb_array(image, where))).permute(2, 0, 1).contiguous()  # writable
    channels_last = not isinstance(image, torch.Tensor)
    try:
        x = torch.from_numpy(np.array(image)) if channels_last else image.detach().cpu()  # a memmap is read-only
    except TypeError:
        raise UserError(f"{where} is of type {type(image).__name__}, not an image: give a PIL image, an array or "
                        "a tensor") from None
    given = list(x.shape)
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 3 and channels_last:
        x = x.permute(2, 0, 1)
    if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
        hint = (" (channels first: an array's are last, .transpose(1, 2, 0))"
                if channels_last and len(given) == 3 and given[0] in (1, 3, 4) else
                " (channels last: a tensor's are first, .permute(2, 0, 1))"
                if not channels_last and len(given) == 3 and given[-1] in (1, 3, 4) else "")
        raise UserError(f"{where} is an image of shape {given}{hint}: give an array HxW or HxWxC, or a tensor "
                        "CxHxW, with 1, 3 or 4 channels")
    x = to_uint8(x, where)[:3]  # RGBA: the colour channels
    return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x.contiguous()


def to_uint8(x: torch.Tensor, where: str) -> torch.Tensor:
    """Pixels as uint8: uint16 scaled (65535 -> 255), booleans as 0 and 255, integers in 0..255 and floats in
    [0, 1] read as they are; others refused (their range would wrap or clip, or NaN read as 0)."""
    if x.dtype == torch.uint8:
        return x
    if x.dtype == torch.bool:  # a mask: PIL's mode "1" reads as 0 and 255
        return x.to(torch.uint8) * 255
    if x.dtype == torch.uint16:  # 16-bit images (DICOM, 16-bit PNG) scaled as a folder's 16-bit PNG is
        return (x.to(torch.int32).double() * 255 / 65535).round().to(torch.uint8)
    given = x.dtype
    if x.dtype in (torch.uint32, torch.uint64):  # torch has no min/max of these: their range as int64's
        x = x.to(torch.int64) if int(x.to(torch.float64).max()) < 2**63 else x.to(torch.float64)
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise UserError(f"{where} has pixels that are not finite (NaN or inf): give finite values")
    low, high = float(x.min()), float(x.max())
    if x.is_floating_point():
        if low < 0 or high > 1:
            raise UserError(f"{where} has float pixels from {low:g} to {high:g}: give floats in [0, 1] (divide by "
                            "the largest value) or uint8")
        return (x.float() * 255).round().to(torch.uint8)
    if low < 0 or high > 255:
        raise UserError(f"{where} has {str(given).removeprefix('torch.')} pixels from {low:g} to {high:g}: give "
                        "uint8, uint16, or floats in [0, 1]")
    return x.to(torch.uint8)


_DATASETS: OrderedDict[tuple[str, str | None, str], tuple[Any, Any]] = OrderedDict()  # (source, root, split) ->
# (the function, its dataset): the last few made in this process
KEPT_DATASETS = 4


def _dataset(function: Callable[[str, str | None], Any], source: str, root: str | None, split: str) -> Any:
    """The function's dataset of a split, made once a process for that function (a run's periodic k-NN reads
    both splits again); a module reloaded (`importlib.reload`) gives a new function, so its dataset is made
    anew. (Kept by name beside the function: a callable object need not hash.)"""
    key = (source, root, split)
    if key in _DATASETS and _DATASETS[key][0] is function:
        _DATASETS.move_to_end(key)
        return _DATASETS[key][1]
    try:
        dataset = function(split, root)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"data.source={source} raised for the {split} split: {raised(exc)}") from exc
    _DATASETS[key] = (function, dataset)
    _DATASETS.move_to_end(key)
    while len(_DATASETS) > KEPT_DATASETS:
        _DATASETS.popitem(last=False)
    return dataset


def python_source(cfg: DataConfig, split: str) -> PythonSource:
    """The `split` ("train" or "test") of the dataset that data.source's function gives."""
    assert cfg.source is not None  # `validate` refuses data.name=python without it
    return PythonSource(_dataset(import_source(cfg.source), cfg.source, cfg.root, split), cfg.source, split)
