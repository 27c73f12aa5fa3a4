"""Any folder of images, with class sub-folders (labelled) or flat (unlabelled).

Images are decoded robustly: EXIF orientation applied; grayscale, RGBA, palette, CMYK and 16-bit images
converted to 8-bit RGB. A file that cannot be decoded raises `UnreadableImage`; training replaces it by another
image and counts it (`repre.data.sources.first_readable`), so a bad file never stops a run.
"""

from __future__ import annotations

import errno
import io
import itertools
import logging
import os
import re
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

try:  # deprecated since torchvision 0.29 in favour of TorchCodec; PIL decodes everything when it is gone
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - torchvision without image decoding
    ImageReadMode = decode_jpeg = None

from repre.errors import UserError

log = logging.getLogger("repre")

EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics


class UnreadableImage(Exception):
    """A file in the folder that is not a decodable image."""


# the warnings this process has said, by key: a run reads the same images every epoch, builds its sources more
# than once (training, each k-NN) and makes new loaders over them
_said: set[tuple[str, str]] = set()


def warn_once(key: tuple[str, str], message: str, *args: object) -> None:
    """`log.warning(message, *args)` the first time this process meets `key` (what is said, of what). Each data
    worker is a process of its own."""
    if key not in _said:
        _said.add(key)
        log.warning(message, *args)


NAMED_FILES = 20  # a process names this many files of one problem, then no more (a folder of thousands of
# broken files would bury the log)


def warn_file(kind: str, file: str, message: str, *args: object) -> None:
    """`warn_once((kind, file), message, *args)` for the first NAMED_FILES files of `kind` this process meets;
    then once that it names no more of them."""
    if (kind, file) in _said:
        return
    if sum(key[0] == kind for key in _said) < NAMED_FILES:
        warn_once((kind, file), message, *args)
    else:
        warn_once((kind + " more", ""), "more than %d files with this problem (%s): this process names no more of "
                  "them", NAMED_FILES, kind)


def warn_unreadable(why: str, what: str) -> None:
    """Warn "`what`: `why` (...)" the first time this process meets `why` (an UnreadableImage's text: the
    file and what is wrong with it), for the first NAMED_FILES files."""
    warn_file("unreadable", why, "%s: %s (each unreadable file is named once per process)", what, why)


def holds_images(root: str | Path, depth: int = 2) -> bool:
    """Whether `root` is a folder with image files in it or in its sub-folders down to `depth` levels (root/
    train/CLASS/: 2). A quick look, not a scan: the first entries of each folder."""
    root = Path(root)
    if not root.is_dir():
        return False
    entries = list(itertools.islice(root.iterdir(), 50))
    if any(p.suffix.lower() in EXTENSIONS for p in entries):
        return True
    return depth > 0 and any(holds_images(p, depth - 1) for p in entries[:10] if p.is_dir())


# hidden files and folders, and macOS's archive folder: copies and metadata, never images of the dataset
# (.ipynb_checkpoints/ holds copies of a notebook's images, ._x.jpg is AppleDouble metadata)
HIDDEN = re.compile(r"^(\.|__MACOSX$)")


def loose_images(root: Path) -> bool:
    """Whether image files lie in `root` itself (not in a sub-folder): then its images have no classes."""
    with os.scandir(root) as entries:
        return any(e.is_file() and e.name.lower().endswith(EXTENSIONS) and not HIDDEN.match(e.name) for e in entries)


def _visible(names: list[str]) -> list[str]:
    """The sub-folder names a scan reads, in its order: hidden ones left out, the others sorted."""
    return sorted(n for n in names if not HIDDEN.match(n))


def _holds_image(folder: str, seen: set[tuple[int, int]]) -> bool:
    """Whether a scan finds an image file in `folder` or below it: a walk that stops at the first one (a
    directory is read in chunks, so a class folder's first entries usually answer). `seen`: the (device,
    inode) of the folders read already, this one's added; a folder met again (a link) is not read again."""
    stack = [folder]
    while stack:
        path = stack.pop()
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            subs = []
            with os.scandir(path) as entries:
                for e in entries:
                    if HIDDEN.match(e.name):
                        continue
                    try:
                        is_dir = e.is_dir()
                    except OSError:  # a link that cannot be followed: os.walk lists it as a file too
                        is_dir = False
                    if is_dir:
                        subs.append(e.name)
                    elif e.name.lower().endswith(EXTENSIONS):
                        return True
        except OSError:  # a folder that cannot be listed: its images are left out by the scan too
            continue
        stack += [os.path.join(path, n) for n in reversed(_visible(subs))]
    return False


def class_folders(root: str | Path) -> list[str]:
    """The class names of a split folder, sorted: its first-level folders that hold an image at any depth,
    as the scan of `ImageFolder` finds them (hidden folders, folders without an image, and a folder met
    already under an earlier name (a link to it, or the folder a link names) are no class; a folder of no
    image is named in a warning). Held-out splits label by their train split's classes: this finds them
    without listing every image. Where a class folder holds a link to another class folder or to a folder in
    one, the scan reads those images as the first class's: the other class is found here but may hold none."""
    root = str(root)
    with os.scandir(root) as entries:
        folders = [e.name for e in entries if e.is_dir()]
    seen: set[tuple[int, int]] = {(os.stat(root).st_dev, os.stat(root).st_ino)}
    classes: list[str] = []
    empty: list[str] = []
    for name in _visible(folders):
        path = os.path.join(root, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:  # read already under an earlier name
            continue
        (classes if _holds_image(path, seen) else empty).append(name)
    if empty:
        warn_once(("no image", root), "%d folder(s) in %s hold no image and are no class: %s%s", len(empty), root,
                  ", ".join(empty[:5]), ", ..." if len(empty) > 5 else "")
    return classes


def _scan(root: Path, suffixes: tuple[str, ...] = EXTENSIONS) -> tuple[list[str], list[str], list[OSError]]:
    """The image files (files ending in `suffixes`, in any case) under `root` in a fixed order, hidden ones and
    those of hidden folders left out, a folder reached twice (a link) read once, as paths relative to it; the
    first-level folder each is in ("" for a file in `root` itself); the errors of the folders that could not be
    listed (their images left out; each is warned of). Strings, not `Path`s, which take far longer to make
    (docs/results.md, section 6)."""
    unlisted: list[OSError] = []
    names, tops, seen, looped = [], [], set(), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unlisted.append):
        folder = os.stat(dirpath)
        if (folder.st_dev, folder.st_ino) in seen:  # a link back to a folder already read: its images once
            looped.append(dirpath)
            dirnames.clear()
            continue
        seen.add((folder.st_dev, folder.st_ino))
        dirnames[:] = _visible(dirnames)
        rel = os.path.relpath(dirpath, root)
        prefix, top = ("", "") if rel == "." else (rel + os.sep, rel.split(os.sep, 1)[0])
        found = [prefix + f for f in sorted(filenames) if f.lower().endswith(suffixes) and not HIDDEN.match(f)]
        names += found
        tops += [top] * len(found)
    if looped:
        warn_once(("read already", str(root)), "%d folder(s) under %s were read already under another name (a "
                  "link), left out: %s%s", len(looped), root, "; ".join(looped[:3]), "; ..." if len(looped) > 3 else "")
    if unlisted:  # one warning a scan (each process scans): the first folders named
        named = "; ".join(f"{exc.filename} ({exc.strerror})" for exc in unlisted[:3])
        log.warning("cannot list %d folder(s), their images left out: %s%s", len(unlisted), named,
                    "; ..." if len(unlisted) > 3 else "")
    return names, tops, unlisted


def files_under(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files under `root` ending in `suffixes` (any case), sorted, by the image folders' rules (`_scan`)."""
    return [root / name for name in _scan(root, suffixes)[0]]


class PackedStrings:
    """A sequence of strings held in two arrays: their bytes end to end, and where each starts. A list of `str`
    or `Path` objects is copied into each forked data worker page by page, as reading it touches the objects'
    reference counts (docs/results.md, section 6: most of the index a worker), and pickles slowly to a spawned
    one; two arrays are neither."""

    def __init__(self, items: Sequence[str]) -> None:
        encoded = [os.fsencode(item) for item in items]
        self._starts = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._starts[1:])
        self._bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        index %= len(self)
        return os.fsdecode(self._bytes[self._starts[index]:self._starts[index + 1]].tobytes())


def to_rgb_array(img: Image.Image, name: object = "an image") -> np.ndarray:
    """Any PIL image -> uint8 [H, W, 3], with EXIF orientation applied (where `name`'s EXIF can be read)."""
    from_file = img.format is not None  # before the transpose, whose copy has no format
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - an EXIF block Pillow cannot parse: the pixels are still good
        warn_file("unreadable EXIF", str(name), "%s: its EXIF cannot be read (%s); taken unturned", name, exc)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.repeat(_to_8_bits(img, from_file)[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"))


def _to_8_bits(img: Image.Image, from_file: bool) -> np.ndarray:
    """A grey image of more than 8 bits (PIL modes I;16*, I, F) -> uint8 [H, W], rounded as
    `python_source.to_uint8` rounds arrays. Integers are scaled from 0..65535: a file opened as mode I holds 16-bit
    values too (a 16-bit PGM); a mode-I image made in code with values up to 255 is read as 8-bit, as an array of
    them is. Floats are read from [0, 1]. Values beyond these ranges are scaled by the image's own maximum (no range
    is standard there)."""
    arr = np.asarray(img, dtype=np.float64)
    high = float(arr.max()) if arr.size else 0.0
    if img.mode == "F":
        usual = 1.0
    elif img.mode == "I" and not from_file and high <= 255:
        usual = 255.0
    else:
        usual = 65535.0
    top = usual if high <= usual else high
    return np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)


def complete_jpeg(data: bytes) -> bool:
    """Whether torchvision's JPEG decoder is available and `data` is a whole JPEG (its start and end markers; a
    truncated file is left to PIL, which names what is wrong)."""
    return decode_jpeg is not None and data.startswith(b"\xff\xd8") and data.rstrip(b"\0").endswith(b"\xff\xd9")


def jpeg_pixels(data: bytes) -> int | None:
    """A JPEG's height x width as its frame header (SOFn) gives it, without decoding; None where none is found."""
    i, end = 2, len(data) - 9
    while i < end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header, not DHT/JPG/DAC
            return int.from_bytes(data[i + 5:i + 7], "big") * int.from_bytes(data[i + 7:i + 9], "big")
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def pil_refuses(pixels: int) -> bool:
    """Whether Pillow refuses an image of `pixels` as a decompression bomb (over twice MAX_IMAGE_PIXELS)."""
    return Image.MAX_IMAGE_PIXELS is not None and pixels > 2 * Image.MAX_IMAGE_PIXELS


def _decode_fast(data: bytes) -> torch.Tensor | None:
    """JPEGs through torchvision's libjpeg-turbo decoder (faster than PIL's on one core, the same pixels;
    docs/results.md), EXIF orientation applied; None for anything else (PIL's path then decides: a truncated
    JPEG, and one larger than Pillow decodes, are refused there, as an image of any other format)."""
    pixels = jpeg_pixels(data) if complete_jpeg(data) else None
    if pixels is None or pil_refuses(pixels):  # a header not read here (stray bytes): PIL decides on its size
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                              apply_exif_orientation=True)
    except RuntimeError:
        return None
    return img if img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3 else None


def _decode_pil(stream: BinaryIO, path_name: object) -> torch.Tensor:
    try:
        with Image.open(stream) as img:
            img.load()
            arr = to_rgb_array(img, path_name)
    except Image.DecompressionBombError as exc:
        assert Image.MAX_IMAGE_PIXELS is not None  # PIL raises this error only where its limit is set
        size = re.search(r"\((\d+) pixels\)", str(exc))
        raise UnreadableImage(f"{path_name}: {f'{int(size[1]):,} pixels' if size else 'an image'}, more than the "
                              f"{2 * Image.MAX_IMAGE_PIXELS:,} Pillow decodes (its guard against decompression "
                              "bombs): downscale it") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types (OSError, EOFError, struct.error, ...)
        why = re.sub(r" <_io\.\w+ object at 0x[0-9a-f]+>", "", str(exc))  # PIL names the buffer, not the file
        raise UnreadableImage(f"{path_name}: {why}") from None
    if arr.ndim != 3 or min(arr.shape[:2]) < 1:
        raise UnreadableImage(f"{path_name}: empty image")
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1)  # a writable copy (PIL arrays are read-only)


def read_file(path: str | Path) -> bytes:
    """A regular file's bytes; OSError for anything else named like an image (a FIFO would block its reader
    for good, a device read without end)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return Path(path).read_bytes()


def decode(path: str | Path | BinaryIO, name: str | None = None) -> torch.Tensor:
    """A file (or an open binary stream, called `name` in messages) -> uint8 [3, H, W]; raises
    UnreadableImage for anything that cannot be fully decoded. JPEGs go through torchvision's decoder (those
    it refuses fall back to PIL), everything else through PIL."""
    path_name = name or path
    try:
        data = path.read() if hasattr(path, "read") else read_file(path)
    except OSError as exc:
        raise UnreadableImage(f"{path_name}: {exc}") from None
    if not data:
        raise UnreadableImage(f"{path_name}: empty (0 bytes): a copy that failed?")
    fast = _decode_fast(data)
    return fast if fast is not None else _decode_pil(io.BytesIO(data), path_name)


class ImageFolder:
    """Images under `root`; a label per first-level sub-folder when every image sits in one (else -1)."""

    mean, std = MEAN, STD

    def __init__(self, root: str | Path, classes: list[str] | None = None) -> None:
        """`classes`: the label order to use (an evaluation split takes its train split's classes)."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"image folder {self.root} does not exist; set data.root to a folder of images")
        names, tops, unlisted = _scan(self.root)
        if not names and unlisted:
            raise UserError(f"no readable images in {self.root}: {len(unlisted)} folder(s) cannot be listed, "
                            f"{unlisted[0].filename} first ({unlisted[0].strerror}); give this user read access")
        if not names:
            raise UserError(
                f"no images in {self.root} (looked for {', '.join(EXTENSIONS)} in it and its sub-folders); "
                "point data.root at a folder that holds images"
            )
        parents = sorted(set(tops) - {""})
        labelled = "" not in tops
        loose = tops.count("")
        if loose and len(parents) > 1 and loose < len(tops) - loose:  # class folders and a few strays
            warn_once(("loose", str(self.root)), "%s: %d image(s) lie beside its %d sub-folders (%s first), so its "
                      "images are read without classes (labels come from sub-folders when every image is in one): "
                      "move them into a class folder, or out of it, to keep the labels", self.root, loose,
                      len(parents), names[tops.index("")])
        self.classes = (classes or parents) if labelled else []
        unknown = sorted(set(parents) - set(self.classes))
        if labelled and unknown:
            raise UserError(f"{self.root} has classes the train split lacks: {', '.join(unknown[:5])}; each class "
                            "folder of a held-out split needs one of the same name under train/ (the labels are "
                            "the train split's): add its training images there, or move these folders out")
        index = {c: i for i, c in enumerate(self.classes)}
        self.names = PackedStrings(names)  # relative to root
        self.labels = np.array([index[t] for t in tops], dtype=np.int64) if labelled else np.full(len(names), -1)
        self.num_classes = len(self.classes) or None

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return decode(self.path(index)), int(self.labels[index])

    def path(self, index: int) -> str:
        """Where image `index` lives: its file."""
        return os.path.join(self.root, self.names[index])

    def encoded(self, index: int) -> tuple[bytes, str, int]:
        """The file's bytes undecoded, its name for messages, its label; raises UnreadableImage."""
        path = self.path(index)
        try:
            return read_file(path), path, int(self.labels[index])
        except OSError as exc:
            raise UnreadableImage(f"{path}: {exc}") from None
