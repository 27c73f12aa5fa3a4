"""The files of `repre embed`, written as it goes so that a stopped run continues where it stopped.

    FILE.npy   float32 [N, D]: one L2-normalized embedding a row, N = the readable images
    FILE.csv   the index, one line a row: row, index (in the source), path ("" when the source is not files),
               label ("" when unknown)
    FILE.json  the card: which checkpoint, encoder and data made the rows (`identity`), the command's
               overrides and split, and the progress (`next_index`, `rows`, `skipped`, `complete`)

FILE.npy is a `numpy.lib.format.open_memmap` of one row per source image; rows go in as batches come, and
on completion its header is rewritten to the rows written and the file cut there (numpy leaves room in the
header for the first dimension to change in place). After each batch the rows are flushed, the index line
appended, then the card replaced atomically: the card never counts a row that is not on disk, and rows or
lines past its count are overwritten when the run continues.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format

from repre.core.atomic import replacing
from repre.errors import UserError

FORMAT = "repre-embed-1"

# an embedding file with rows that are not finite (written before embed refused them)
NOT_FINITE = ("the embeddings hold rows that are not finite (NaN or inf): they were embedded from a diverged "
              "checkpoint, or in reduced precision that overflowed; embed an earlier checkpoint, or with "
              "--set train.precision=fp32, with --overwrite")
COLUMNS = ("row", "index", "path", "label")


@dataclass(frozen=True)
class EmbeddingFiles:
    """The three files of one embedding, named from FILE.npy."""

    npy: Path
    csv: Path
    card: Path

    @classmethod
    def of(cls, out: str | Path) -> EmbeddingFiles:
        out = Path(out).expanduser()
        if out.suffix != ".npy":
            raise UserError(f"{out} must end in .npy (the index goes beside it as .csv, the card as .json)")
        return cls(out, out.with_suffix(".csv"), out.with_suffix(".json"))

    def existing(self) -> list[Path]:
        return [p for p in (self.npy, self.csv, self.card) if p.exists()]


def read_card(path: Path) -> dict[str, Any] | None:
    """The card at `path`, or None when it is missing or not an embedding card."""
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) and card.get("format") == FORMAT else None


def write_card(path: Path, card: dict[str, Any]) -> None:
    """Replace the card atomically (a temporary file renamed over it)."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n")


def finished_card(files: EmbeddingFiles) -> dict[str, Any]:
    """The card of finished embeddings, or exit 2 saying what to do."""
    card = read_card(files.card)
    if not files.npy.is_file():
        raise UserError(f"{files.npy} does not exist: give the FILE.npy a `repre embed --out FILE.npy` wrote")
    if card is None or not files.csv.is_file():
        raise UserError(f"{files.npy} needs its .csv index and .json card beside it, as `repre embed` writes them")
    if not card["progress"]["complete"]:
        raise UserError(f"{files.npy} is unfinished ({card['progress']['rows']} rows so far): rerun the same "
                        "`repre embed` command to finish it")
    return card


def finished_rows(files: EmbeddingFiles, card: dict[str, Any]) -> np.ndarray:
    """The rows [N, D] of finished embeddings (a memory map), or exit 2 where the file is not what its card
    says (cut short by a copy or a full disk)."""
    try:
        rows = np.load(files.npy, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {files.npy} ({exc}): rerun `repre embed --overwrite`") from None
    if rows.ndim != 2 or len(rows) != card["progress"]["rows"]:
        raise UserError(f"{files.npy} holds {rows.shape}, its card {card['progress']['rows']} rows: rerun "
                        "`repre embed --overwrite`")
    return rows


def index_lines_of(path: Path) -> Iterator[tuple[int, int, str, int | None]]:
    """The index's lines, one at a time: (row, source index, path, label or None); a damaged line (a file cut
    short, edited) exits 2."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        for number, line in enumerate(csv.DictReader(fh), start=2):
            try:
                yield (int(line["row"]), int(line["index"]), line["path"],
                       int(line["label"]) if line["label"] else None)
            except (TypeError, ValueError):  # a field missing (None) or not a number
                raise UserError(f"{path} line {number} is damaged ({','.join(map(str, line.values()))!r}): rerun "
                                "`repre embed --overwrite`") from None


def read_index(path: Path, wanted: set[int], expected: int) -> dict[int, tuple[int, str, int | None]]:
    """The index lines of the `wanted` rows: row -> (source index, path, label or None), read in one pass;
    the index must have `expected` rows."""
    found, count = {}, 0
    for row, index, file, label in index_lines_of(path):
        if row in wanted:
            found[row] = (index, file, label)
        count += 1
    if count != expected:
        raise UserError(f"{path} has {count} rows, the embeddings {expected}: rerun `repre embed --overwrite`")
    return found


def index_lines(rows: range, indices: list[int], paths: list[str], labels: list[int]) -> bytes:
    """CSV lines of the index: row, source index, path, label (-1 written as "")."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row, index, path, label in zip(rows, indices, paths, labels, strict=True):
        writer.writerow((row, index, path, "" if label < 0 else label))
    return buf.getvalue().encode("utf-8", "surrogateescape")  # a file name's bytes as they are (not UTF-8 in
    # old archives'), read back by `read_index` to the same path


def set_rows(npy: Path, rows: int) -> None:
    """Rewrite FILE.npy's header to `rows` rows (in place: the header keeps its length) and cut the file there."""
    with open(npy, "r+b") as fh:
        version = npy_format.read_magic(fh)
        shape, fortran, dtype = _header(fh, version)
        offset = fh.tell()
        header = io.BytesIO()
        npy_format.write_array_header_1_0(header, {"descr": npy_format.dtype_to_descr(dtype),
                                                    "fortran_order": fortran, "shape": (rows, *shape[1:])})
        if version != (1, 0) or len(header.getvalue()) != offset:
            raise UserError(f"{npy} has an unexpected header; rerun with --overwrite")
        fh.seek(0)
        fh.write(header.getvalue())
        fh.truncate(offset + rows * int(np.prod(shape[1:])) * dtype.itemsize)


def _header(fh, version: tuple[int, int]) -> tuple[tuple[int, ...], bool, np.dtype]:
    if version == (1, 0):
        return npy_format.read_array_header_1_0(fh)
    return npy_format.read_array_header_2_0(fh)


def reserve(path: Path) -> None:
    """Allocate the disk blocks of `path` (a memory-mapped file made sparse at its full size): a full disk fails
    here as OSError (ENOSPC), where a write through the memory map would kill the process (SIGBUS). A
    filesystem that cannot allocate ahead keeps the file sparse."""
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise OSError(exc.errno, exc.strerror, str(path)) from None


class EmbeddingWriter:
    """Appends batches of embeddings to FILE.npy and their lines to FILE.csv, and records the progress in the
    card after each batch. `create` starts the files; `reopen` continues them from the card's progress."""

    def __init__(self, files: EmbeddingFiles, card: dict[str, Any], array: np.memmap | None) -> None:
        self.files, self.card, self.array = files, card, array

    @property
    def progress(self) -> dict[str, Any]:
        return self.card["progress"]

    @classmethod
    def create(cls, files: EmbeddingFiles, card: dict[str, Any], images: int, dim: int) -> EmbeddingWriter:
        """New files for up to `images` rows of `dim` values (any old ones replaced)."""
        files.npy.parent.mkdir(parents=True, exist_ok=True)
        files.card.unlink(missing_ok=True)  # no card of old rows beside new files
        array = npy_format.open_memmap(files.npy, mode="w+", dtype=np.float32, shape=(images, dim))
        try:
            reserve(files.npy)
        except OSError:
            del array
            files.npy.unlink(missing_ok=True)
            raise
        files.csv.write_bytes(",".join(COLUMNS).encode() + b"\n")
        card = {**card, "progress": {"next_index": 0, "rows": 0, "skipped": 0, "complete": False,
                                     "csv_bytes": files.csv.stat().st_size}}
        write_card(files.card, card)
        return cls(files, card, array)

    @classmethod
    def reopen(cls, files: EmbeddingFiles, card: dict[str, Any]) -> EmbeddingWriter:
        """The files of an earlier run of the same identity, from its recorded progress: rows and index lines
        past it are dropped."""
        progress = card["progress"]
        if progress["complete"]:  # still whole: a rerun must not pad a file cut short since to its card's rows
            for path in (files.npy, files.csv):
                if not path.is_file():
                    raise UserError(f"{path} is missing beside its card {files.card.name}, which says the "
                                    "embedding is finished: rerun with --overwrite to embed again")
            finished_rows(files, card)
            size = files.csv.stat().st_size
            if size != progress.get("csv_bytes", size):
                raise UserError(f"{files.csv} has {size:,} bytes, its card {progress['csv_bytes']:,} (cut short or "
                                "changed since): rerun with --overwrite to embed again")
            read_index(files.csv, set(), progress["rows"])
            return cls(files, card, None)
        try:
            array = np.load(files.npy, mmap_mode="r+")
            with open(files.csv, "r+b") as fh:
                fh.truncate(progress["csv_bytes"])
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot continue {files.npy} ({exc}); rerun with --overwrite") from None
        if array.ndim != 2 or array.shape[0] < progress["rows"] or array.dtype != np.float32:
            raise UserError(f"{files.npy} does not match its card {files.card}; rerun with --overwrite")
        return cls(files, card, array)

    def append(self, feats: torch.Tensor | None, indices: list[int], paths: list[str], labels: list[int],
               skipped: int, end: int) -> None:
        """One batch: its embeddings [B, D] (None: no readable image), their source indices, paths and labels;
        `skipped` unreadable images; `end` one past its last source index."""
        p = self.progress
        rows = range(p["rows"], p["rows"] + len(indices))
        if feats is not None:
            assert self.array is not None  # None only for complete files (reopened or finished): no batch comes
            self.array[rows.start:rows.stop] = feats.numpy()
            self.array.flush()
        with open(self.files.csv, "ab") as fh:
            fh.write(index_lines(rows, indices, paths, labels))
            csv_bytes = fh.tell()
        p.update(next_index=end, rows=rows.stop, skipped=p["skipped"] + skipped, csv_bytes=csv_bytes)
        write_card(self.files.card, self.card)

    def finish(self) -> dict[str, Any]:
        """Cut FILE.npy to the rows written and mark the card complete; returns the card (a finished one as it
        is: nothing written)."""
        if self.progress["complete"]:
            return self.card
        self.array = None  # the mapping closes before the file is cut
        set_rows(self.files.npy, self.progress["rows"])
        self.progress["complete"] = True
        write_card(self.files.card, self.card)
        return self.card
