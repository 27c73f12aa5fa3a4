"""Tar shards in the WebDataset layout, read with random access: `data.name=shards`.

A shard is an uncompressed .tar whose members are grouped into samples by key (the member's path up to the
first dot of its file name): `n01440764_10026.jpg` (or .jpeg, .png, .webp, ...) is the image and an optional
`n01440764_10026.cls` holds its integer label as text. `data.root` is a folder of shards (its `train/` and
`val/` sub-folders when present, as for image folders), a single .tar, or a brace pattern
(`/data/in1k/train-{000000..001023}.tar`).

On opening, the members' headers are scanned (no image is read) into an index of (shard, offset, size), cached
per user in $REPRE_CACHE or ~/.cache/repre and keyed by the shards' paths, sizes and modification times:
every image is then one seek and one read, so the sampler's (seed, epoch, index) order, exact resume and the
distributed shares work as for image folders. This suits local disks and network file systems (NFS, Lustre,
a FUSE mount of an object store); compressed shards (.tar.gz) cannot be read at random and are refused.
Images are decoded as image folders decode them; an unreadable one is replaced (as a folder's: `first_readable`)
and counted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import torch
from braceexpand import UnbalancedBracesError, braceexpand  # type: ignore[attr-defined]  # its .pyi omits the error

from repre.core.atomic import replacing
from repre.data.folder import EXTENSIONS, MEAN, STD, UnreadableImage, decode, files_under
from repre.errors import UserError

log = logging.getLogger("repre")

LABEL_EXTENSIONS = (".cls", ".cls.txt", ".label")
# of the cached index's layout and checks (2: shards cut short or damaged refused; 3: a sample's first image
# alone; 4: with its own label; 5: with the members left out, said at every run)
INDEX_VERSION = 5
OPEN_FILES = 64  # shard handles kept open per process
# a label this large, and 100 times the number of distinct labels, is a class id rather than an index (WordNet's
# n01440764 reads as 1,440,764; ImageNet-21k's indices stay below 22,000)
LABEL_OUTLIER = 100_000
GLOB = re.compile(r"[*?\[]")


def expand(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> [a-000.tar, a-001.tar, a-002.tar]: brace patterns as bash (and WebDataset) expand
    them, by `braceexpand`: ranges padded to the longer end's width where an end has a leading zero, counted
    down, stepped ({0..8..2}), lists ({a,c}), several in one pattern."""
    try:
        return list(braceexpand(pattern))  # escape=True, as WebDataset calls it: \{ is a brace
    except UnbalancedBracesError:
        raise UserError(f"data.root {pattern}: its braces do not pair up; a pattern such as "
                        "/data/train-{000000..000099}.tar or /data/{a,b}.tar") from None


COMPRESSED = (".tar.gz", ".tgz", ".tar.xz")


def shard_files(base: Path) -> tuple[list[Path], list[Path]]:
    """The .tar files under the folder `base` (sub-folders included, any case: B.TAR), and its compressed
    shards, sorted; by the image folders' rules (`folder.files_under`: hidden files and folders, .Trash or
    macOS's ._x.tar, left out; a folder reached twice through a link read once)."""
    found = files_under(base, (".tar", *COMPRESSED))
    return ([p for p in found if p.name.lower().endswith(".tar")],
            [p for p in found if p.name.lower().endswith(COMPRESSED)])


def shard_paths(root: str) -> list[Path]:
    """The shard files `root` names: a folder's .tar files (sorted, sub-folders included), a .tar, or a
    pattern."""
    base = Path(root)
    if base.is_dir():
        paths, compressed = shard_files(base)
        if not paths and compressed:
            raise UserError(f"{base} holds compressed shards ({compressed[0].name}, ...): random access needs "
                            "uncompressed .tar shards (images are compressed already); re-pack them with "
                            "`gunzip`")
        if not paths:
            raise UserError(f"no .tar shards in {base}; point data.root at a folder of WebDataset shards, a "
                            "shard, or a pattern such as /data/train-{000000..000099}.tar")
        return paths
    paths = [Path(p) for p in expand(root)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        wildcard = GLOB.search(root)
        glob = (f"; repre expands brace patterns ({{a..b}}, {{a,b}}) as WebDataset does, not {wildcard[0]}: "
                "give the folder of the shards or a brace pattern" if wildcard else "; check data.root")
        raise UserError(f"shard {missing[0]} does not exist ({len(missing)} of {len(paths)} missing){glob}")
    return paths


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name; the rest, the extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + ext).lower()


def dotted_image(ext: str) -> bool:
    """Whether a member's extension (`split_key`'s) is no image's, though its last part is: frame.000001.jpg,
    IMG_1.edited.jpg. By WebDataset's rule that is a field "000001.jpg" of sample "frame", not an image: left
    out, and said (`warn_dotted`)."""
    return ext not in EXTENSIONS and "." + ext.rsplit(".", 1)[-1] in EXTENSIONS


def label_in(text: str) -> int | None:
    """The class index a label member holds (`LABEL_EXTENSIONS`; its text stripped), or None: an integer in
    ASCII digits alone, as indexed and streamed shards both read it (int() would take "+3", "٣" and "1_0")."""
    digits = text.removeprefix("-")  # one sign: "--3" is no integer
    return int(text) if digits.isascii() and digits.isdigit() else None


def warn_dotted(count: int, example: str, where: str) -> None:
    log.warning("%d member(s) of the shards in %s end in an image extension but hold more dots (%s): by "
                "WebDataset's rule (the key ends at the first dot) none is an image, so they are left out; name "
                "each sample KEY.jpg, with no dot in KEY", count, where, example)


def warn_second_images(count: int, example: str, where: str) -> None:
    log.warning("%d member(s) of the shards in %s are a sample's second image (%s): a sample is the members of "
                "one key in a row, so each reads its first image alone; give each image a key of its own",
                count, where, example)


def warn_unpaired_labels(count: int, example: str, where: str) -> None:
    log.warning("%d label member(s) of the shards in %s have no image of their key in their row (%s): a sample is "
                "the members of one key in a row, so their images are read without them; write each KEY.cls next "
                "to its KEY.jpg (`tar cf SHARD.tar --sort=name -C FOLDER .` keeps a key's members together), not "
                "every label after every image", count, where, example)


@dataclass
class LeftOut:
    """The members a shard's grouping (`samples_of`) left out, by why."""

    dotted: list[str] = field(default_factory=list)  # dots in the name (`dotted_image`)
    second: list[str] = field(default_factory=list)  # a sample's images after its first
    unpaired: list[str] = field(default_factory=list)  # label members of a key with no image in its row

    def add(self, other: LeftOut) -> None:
        self.dotted += other.dotted
        self.second += other.second
        self.unpaired += other.unpaired

    def summary(self) -> np.ndarray:
        """[3, 2] text: the count and the first name of each kind, as the index cache keeps them."""
        return np.array([[str(len(names)), names[0] if names else ""]
                         for names in (self.dotted, self.second, self.unpaired)])

    def warn(self, where: str) -> None:
        warn_left_out(self.summary(), where)


def warn_left_out(summary: np.ndarray, where: str) -> None:
    """The warnings of `LeftOut.summary()`: each kind of member left out, counted, its first named."""
    for (count, first), warn in zip(summary.tolist(), (warn_dotted, warn_second_images, warn_unpaired_labels),
                                    strict=True):
        if int(count):
            warn(int(count), first, where)


Image = TypeVar("Image")


def member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A file member's bytes (`samples_of` reads file members only)."""
    reader = tar.extractfile(member)
    assert reader is not None  # tarfile gives no reader for a member that is no file (a folder, a device)
    return reader.read()


def samples_of(tar: tarfile.TarFile, image_of: Callable[[tarfile.TarInfo], Image],
               label_of: Callable[[tarfile.TarInfo, str], int], left: LeftOut) -> Iterator[tuple[str, Image, int]]:
    """The samples of a shard opened by `tar` (random access or a stream), in member order: (key, `image_of`
    its first image member, its label or -1). WebDataset's rule: a sample is the members of one key in a row
    (`split_key`); its label is its last label member (`LABEL_EXTENSIONS`), whose stripped text `label_of` reads,
    before or after the image. A sample is given once its row ends; what it leaves out goes to `left`."""
    # the sample being read: its key, first image, label and label members (none yet: what a new key starts with)
    key, label = "", -1
    image: Image | None = None
    labels: list[str] = []
    for member in tar:
        if not member.isfile():
            continue
        k, ext = split_key(member.name)
        if k != key:
            if image is not None:
                yield key, image, label
            elif labels:
                left.unpaired.append(labels[0])
            key, image, label, labels = k, None, -1, []
        if ext in EXTENSIONS and image is None:
            image = image_of(member)
        elif ext in EXTENSIONS:
            left.second.append(member.name)
        elif dotted_image(ext):
            left.dotted.append(member.name)
        elif ext in LABEL_EXTENSIONS:
            label = label_of(member, member_bytes(tar, member).decode("utf-8", "replace").strip())
            labels.append(member.name)
    if image is not None:
        yield key, image, label
    elif labels:
        left.unpaired.append(labels[0])


def after_end(chunks: Iterable[bytes]) -> str | None:
    """What follows the point where a tar's member headers stopped, given as `chunks` from a block's start (the
    block where they stopped, or a stream's next one): None for zeros alone (its end-of-archive blocks and
    padding); "joined" where the first block that is not zeros is a tar header after a whole block of zeros (a
    second archive joined on after the first one's end: `cat a.tar b.tar`, which tar and WebDataset read only
    the first of); "damaged" otherwise (a damaged header, the members after it unread)."""
    chunks = iter(chunks)
    buf, zeros_before = b"", False  # whether a whole block of zeros was passed over
    for chunk in chunks:
        buf += chunk
        first = len(buf) - len(buf.lstrip(b"\0"))
        if first == len(buf):
            whole = len(buf) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
            zeros_before = zeros_before or whole > 0
            buf = buf[whole:]  # zeros: keep the partial block
            continue
        start = first // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
        while len(buf) < start + tarfile.BLOCKSIZE and (more := next(chunks, b"")):
            buf += more
        if not zeros_before:
            zeros_before = start >= tarfile.BLOCKSIZE
        try:
            tarfile.TarInfo.frombuf(buf[start:start + tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return "damaged"
        return "joined" if zeros_before else "damaged"  # a header right after the stop: the damaged one's next
    return None


def file_chunks(path: Path, offset: int) -> Iterator[bytes]:
    """The bytes of the file at `path` from `offset` on, 1 MB at a time."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        yield from iter(lambda: fh.read(1 << 20), b"")


AFTER_END = {"damaged": ("has a damaged member header", "copy it again"),
             "joined": ("is tar archives joined end to end (`cat a.tar b.tar`): the first one ends",
                        "tar and WebDataset read the first alone; keep the archives as shards of their own, or join "
                        "them with `tar -Af first.tar second.tar`")}


def _scan(path: Path, shard: int) -> tuple[list[list], LeftOut]:
    """One shard's samples [[shard, offset, size, key, label or -1]] in member order (`samples_of`), and the
    members it left out."""
    if path.stat().st_size == 0:  # tarfile: "not a tar file (empty file)", as if it were compressed
        raise UserError(f"{path} is empty (0 bytes): a copy that failed; copy it again, or remove it")
    try:
        tar = tarfile.open(path, "r:")  # reads the first member's header
    except tarfile.ReadError as exc:
        raise UserError(f"{path} is not an uncompressed tar file ({exc}); shards must be plain .tar") from None

    def label_of(member: tarfile.TarInfo, text: str) -> int:
        if (found := label_in(text)) is None:
            ext = split_key(member.name)[1]
            raise UserError(f"{path}: {member.name} holds {text[:20]!r}, not an integer label: a {ext} member holds "
                            "the class index (0, 1, ...) as text; write the indices (keep class names in another "
                            f"member, e.g. KEY.txt, which is not read), or leave out every {ext} for unlabelled "
                            "images")
        return found

    images: list[list] = []
    left = LeftOut()
    with tar:
        try:
            for key, (offset, size), label in samples_of(tar, lambda m: (m.offset_data, m.size), label_of, left):
                images.append([shard, offset, size, key, label])
        except tarfile.ReadError as exc:  # read well up to some member: a shard cut short (a copy that stopped)
            raise UserError(f"{path} ends in the middle of a member ({exc}) after {len(images)} images: it is cut "
                            "short; copy it again") from None
        end = tar.offset  # where the member headers stopped: the end-of-archive blocks, or a damaged header
    # tarfile stops quietly where a header is cut short or damaged, its members after it unread: its end is a
    # whole end-of-archive block and zeros after it
    if path.stat().st_size - end < tarfile.BLOCKSIZE:
        why, advice = "is cut short (no end-of-archive block)", "copy it again"
    elif found := after_end(file_chunks(path, end)):
        why, advice = AFTER_END[found]
    else:
        return images, left
    raise UserError(f"{path} {why} at byte {end:,}, after {len(images)} images: the members after it cannot be "
                    f"read; {advice}")


def build_index(paths: list[Path], root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scan the shards' member headers: (entries [N, 3] int64: shard, offset, size; keys [N] bytes; labels [N];
    the members left out, `LeftOut.summary()`)."""
    start = time.perf_counter()
    entries, keys, labels_of, left = [], [], [], LeftOut()
    for i, path in enumerate(paths):
        images, left_out = _scan(path, i)
        left.add(left_out)
        for shard, offset, size, key, label in images:
            entries.append((shard, offset, size))
            keys.append(key.encode("utf-8", "surrogateescape"))  # a name that is not UTF-8 as tarfile read it
            labels_of.append(label)
    if not entries:
        raise UserError(f"the {len(paths)} shards under {root} hold no images (looked for members named "
                        f"KEY{', KEY'.join(EXTENSIONS)}, KEY without a dot)")
    log.info("indexed %d images in %d shards under %s (%.1f s)", len(entries), len(paths), root,
             time.perf_counter() - start)
    return np.array(entries, dtype=np.int64), np.array(keys), np.array(labels_of, dtype=np.int64), left.summary()


def index_cache(paths: list[Path]) -> Path:
    """Where the index of these exact shards (paths, sizes, modification times) is cached for the next run:
    $REPRE_CACHE or ~/.cache/repre, per user and machine, so read-only datasets are indexed once."""
    h = hashlib.sha1(str(INDEX_VERSION).encode())
    for path in paths:
        st = path.stat()
        h.update(os.fsencode(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n"))
    base = Path(os.environ.get("REPRE_CACHE", Path.home() / ".cache" / "repre"))
    return base / "shard-index" / f"{h.hexdigest()[:20]}.npz"


def load_index(paths: list[Path], root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shards' index from the cache when it matches them, else scanned (and cached when possible); the
    members the shards leave out are said either way."""
    cache = index_cache(paths)
    try:
        with np.load(cache) as z:
            index = z["entries"], z["keys"], z["labels"], z["left_out"]
    except FileNotFoundError:
        index = None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # a write cut short: index again
        log.info("the cached shard index %s cannot be read (%s): indexing the shards again", cache, exc)
        index = None
    if index is None:
        index = build_index(paths, root)
        try:
            with replacing(cache) as tmp:
                np.savez(tmp, entries=index[0], keys=index[1], labels=index[2], left_out=index[3])
        except OSError as exc:  # a read-only home: index again next time
            log.info("could not cache the shard index in %s (%s)", cache, exc)
    warn_left_out(index[3], root)
    return index[0], index[1], index[2]


class TarShards:
    """The images of WebDataset shards, indexable; labels from `.cls` members (-1 where absent)."""

    mean, std = MEAN, STD

    def __init__(self, root: str) -> None:
        self.paths = shard_paths(root)
        # numpy arrays, not lists of Python objects: data workers share them without copying (no refcounts)
        self.entries, self.keys, self.labels = load_index(self.paths, root)  # [N, 3] shard/offset/size, [N], [N]
        labelled = int((self.labels >= 0).sum())
        if 0 < labelled < len(self.labels):
            log.warning("%d of %d images in %s have no .cls label (or a negative one): all the shards are read as "
                        "unlabelled (k-NN, the probes and method.name=supervised need labels); give every sample a "
                        "KEY.cls, or none", len(self.labels) - labelled, len(self.labels), root)
            self.labels = np.full_like(self.labels, -1)
        self.num_classes = self._classes(root) if labelled == len(self.labels) else None
        self._handles: OrderedDict[int, BinaryIO] = OrderedDict()
        self._pid = os.getpid()

    def _classes(self, root: str) -> int | None:
        """The class count of labelled shards: the largest label + 1. A label far above the others (a class id,
        such as a WordNet number, where the index was meant) would make it millions of classes, whose tables
        (k-NN's votes, a probe's head) fill the memory: the shards are then read as unlabelled, with a warning
        naming the sample (pre-training needs no labels)."""
        top, distinct = int(self.labels.max()), len(np.unique(self.labels))
        if top < LABEL_OUTLIER or top + 1 <= 100 * distinct:
            return top + 1
        log.warning("%s has label %s, though the shards in %s hold %s distinct labels: read as class indices they "
                    "would make %s classes, so the shards are read as unlabelled (k-NN, the probes and "
                    "method.name=supervised need labels). A KEY.cls holds the class index (0 to classes - 1), not "
                    "a class id: write the indices, numbering the classes in order, and keep ids in another member "
                    "(KEY.txt)", self.path(int(self.labels.argmax())), f"{top:,}", root, f"{distinct:,}",
                    f"{top + 1:,}")
        self.labels = np.full_like(self.labels, -1)
        return None

    def __len__(self) -> int:
        return len(self.entries)

    def _file(self, shard: int) -> BinaryIO:
        """An open handle for `shard`: the OPEN_FILES most recently used stay open per process (data workers
        reopen after the fork), so thousands of shards never exhaust the file-descriptor limit."""
        if self._pid != os.getpid():
            self._handles, self._pid = OrderedDict(), os.getpid()
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            if len(self._handles) >= OPEN_FILES:
                self._handles.popitem(last=False)[1].close()
            self._handles[shard] = open(self.paths[shard], "rb")  # noqa: SIM115 - closed when evicted
        return self._handles[shard]

    def read(self, index: int) -> bytes:
        shard, offset, size = (int(v) for v in self.entries[index])
        fh = self._file(shard)
        fh.seek(offset)
        data = fh.read(size)
        if len(data) != size:
            raise OSError(f"{size - len(data)} bytes missing (the shard is shorter than when it was indexed)")
        return data

    def encoded(self, index: int) -> tuple[bytes, str, int]:
        """The image's bytes undecoded, its name (shard:key) for messages, its label; raises UnreadableImage."""
        shard = int(self.entries[index][0])
        name = self.path(index)
        try:
            data = self.read(index)
        except OSError as exc:  # an I/O error (NFS, a shard changed): replaced and counted, never a crash
            self._handles.pop(shard, None)
            raise UnreadableImage(f"{name}: {exc}") from None
        return data, name, int(self.labels[index])

    def path(self, index: int) -> str:
        """Where image `index` lives: `SHARD.tar:KEY`."""
        return f"{self.paths[int(self.entries[index][0])]}:{self.keys[index].decode('utf-8', 'surrogateescape')}"

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        data, name, label = self.encoded(index)
        return decode(io.BytesIO(data), name), label

    def __getstate__(self) -> dict:  # open files stay behind when a data worker is started by spawn
        return {**self.__dict__, "_handles": {}}
