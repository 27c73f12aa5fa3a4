"""`repre neighbors`: query images and their nearest images in a file of `repre embed`, as a picture.

Each row of the picture is a query (given as rows of FILE.npy, or drawn at random with a fixed seed) and its
k most similar rows (cosine similarity; the query itself left out), the similarity under each. The images are
read from the data the embeddings were made from: the checkpoint's config with the `--set` overrides that
embed was given (recorded in FILE.json), then the overrides given here.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from repre.config import reads
from repre.core import checkpoint_io as ckpt_io
from repre.core.pictures import Column, save_png, sheet, thumb_side, tile
from repre.data.evaluation import centre_view
from repre.data.folder import UnreadableImage
from repre.data.sources import ImageSource, image_path
from repre.errors import UserError
from repre.pretrained import load_checkpoint_config, refuse_unread
from repre.use.embed import embed_source
from repre.use.search import top_k
from repre.use.store import EmbeddingFiles, read_card

QUERY_GAP = 8  # extra pixels between the queries' column and their neighbours
NOTE = ("each row: a query image (#: its row in the embeddings file) and the images whose embeddings are nearest to "
        "its, nearest first, each with its cosine similarity to the query")  # under the picture

log = logging.getLogger("repre")


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


def choose_queries(rows: int, count: int, given: list[int] | None, seed: int) -> list[int]:
    """The query rows: those `given`, checked, or `count` distinct rows drawn from `seed` (the same every time)."""
    if given:
        bad = [r for r in given if not 0 <= r < rows]
        if bad:
            raise UserError(f"--query-index {bad[0]} is not a row of the embeddings (0 to {rows - 1})")
        return list(dict.fromkeys(given))  # a row given twice is drawn once
    if not 0 < count <= rows:
        raise UserError(f"--queries {count}: the embeddings have {rows} rows, so from 1 to {rows}")
    return torch.randperm(rows, generator=torch.Generator().manual_seed(seed))[:count].tolist()


def without_self(query: int, sims: torch.Tensor, rows: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """A query's k + 1 nearest (sims [k + 1], rows [k + 1]) -> its k nearest other rows: (row, similarity)."""
    hits = [(int(r), float(s)) for s, r in zip(sims, rows, strict=True) if int(r) != query]
    return hits[:k]


def read_index(path: Path, wanted: set[int], expected: int) -> dict[int, tuple[int, str, int | None]]:
    """The index lines of the `wanted` rows: row -> (source index, path, label or None), read in one pass;
    the index must have `expected` rows."""
    found, count = {}, 0
    with open(path, newline="") as fh:
        for line in csv.DictReader(fh):
            row = int(line["row"])
            if row in wanted:
                found[row] = (int(line["index"]), line["path"], int(line["label"]) if line["label"] else None)
            count += 1
    if count != expected:
        raise UserError(f"{path} has {count} rows, the embeddings {expected}: rerun `repre embed --overwrite`")
    return found


def thumbnail(source: ImageSource, index: int, path: str, size: int) -> torch.Tensor:
    """Image `index` of `source` as the encoder saw it: uint8 [3, S, S]. It must still be the file the index
    names."""
    if image_path(source, index) != path:
        raise UserError(f"image {index} of the data is {image_path(source, index) or 'not a file'}, the index says "
                        f"{path or 'not a file'}: the data changed since embed, or pass the same --set data.*")
    try:
        img, _ = source.load(index)
    except UnreadableImage as exc:
        raise UserError(f"image {index} cannot be read now ({exc}); it could when it was embedded") from None
    return centre_view(img, size)


def query_source(checkpoint: str | Path | None, card: dict[str, Any], overrides: list[str]) -> tuple[ImageSource, int]:
    """The data the embeddings were made from, and the image side: the checkpoint's config (None: the one embed
    read, named in the card), embed's overrides, then `overrides`."""
    given = checkpoint is not None
    if not given:
        checkpoint = card.get("checkpoint")
        if not checkpoint or not Path(checkpoint).is_file():
            raise UserError(f"the checkpoint the embeddings were made from ({checkpoint}) is gone: give --checkpoint "
                            "RUN, a checkpoint whose data config reads the same images")
    _, cfg = load_checkpoint_config(checkpoint, [*card["overrides"], *overrides])
    ident = card["identity"]
    if ckpt_io.digest(checkpoint) != ident["checkpoint_sha256"]:
        made_from = f"another checkpoint ({card.get('checkpoint')})" if given else "this file before the run went on"
        log.warning("the embeddings were made from %s; the images are read with the data config of %s", made_from,
                    checkpoint)
    source = embed_source(cfg, ident["split"])
    if len(source) != ident["images"]:
        raise UserError(f"the data has {len(source)} images, the embeddings were made from {ident['images']}: "
                        "pass the same --set data.* as embed")
    return source, cfg.data.image_size


def nearest(bank: np.ndarray, queries: list[int], k: int, backend: str) -> list[list[tuple[int, float]]]:
    """bank [N, D] -> for each query row, its k nearest other rows: [(row, cosine similarity), ...], nearest first."""
    sims, found = top_k(bank, torch.from_numpy(np.array(bank[queries])), k + 1, backend)
    return [without_self(q, s, f, k) for q, s, f in zip(queries, sims, found, strict=True)]


def neighbors_picture(source: ImageSource, index: dict, hits: dict[int, list[tuple[int, float]]],
                      size: int, names: list[str] | None = None) -> Image.Image:
    """A row per query: the query image, then its neighbours with their similarities (and classes, when known)
    under them. Four decimals: the features of a short run fill a narrow cone, so neighbours' similarities often
    differ only in the third or fourth."""
    images = [[thumbnail(source, *index[r][:2], size) for r in [q, *(r for r, _ in h)]] for q, h in hits.items()]
    side = thumb_side(size)
    captions = [[f"#{q}{labelled(index, q, names)}", *(f"{s:.4f}{labelled(index, r, names)}" for r, s in h)]
                for q, h in hits.items()]
    titles = ["query", *(f"nearest {c}" if c == 1 else str(c) for c in range(1, len(images[0])))]
    return sheet([Column([tile(row[c], side) for row in images], titles[c], captions=[row[c] for row in captions])
                  for c in range(len(images[0]))], gap=QUERY_GAP, notes=[NOTE])


def labelled(index: dict, row: int, names: list[str] | None) -> str:
    """' NAME' (the row's class name) or ' (label)' when its label is known, else ''."""
    label = index[row][2]
    if label is None:
        return ""
    return f" {names[label]}" if names and 0 <= label < len(names) else f" ({label})"


def described(index: dict, row: int, names: list[str] | None, **more: Any) -> dict[str, Any]:
    """A row of the embeddings as the JSON line gives it: its source index, path, label and the label's name."""
    i, path, label = index[row]
    name = names[label] if names and label is not None and 0 <= label < len(names) else None
    return {"row": row, "index": i, "path": path, "label": label, "class": name, **more}


def neighbors(checkpoint: str | Path | None, embeddings: str | Path, out: str | Path,
              overrides: list[str] | None = None, queries: int = 8, k: int = 5,
              query_rows: list[int] | None = None, seed: int = 0, backend: str = "torch") -> dict[str, Any]:
    """Write a PNG to `out`: each row a query of `embeddings` (FILE.npy of `repre embed`) and its k nearest
    rows, the images read with `checkpoint`'s data config (None: the checkpoint embed read). `query_rows`:
    rows of FILE.npy (default: `queries` rows drawn with `seed`). Returns {"command": "neighbors", "out",
    "backend", "k", "queries": [{"row", "index", "path", "label", "class", "neighbors": [{"row", "index",
    "path", "label", "class", "similarity"}, ...]}, ...]}."""
    refuse_unread("repre neighbors", list(overrides or []), reads.IMAGES)
    files = EmbeddingFiles.of(embeddings)
    card = finished_card(files)
    rows = card["progress"]["rows"]
    if rows < 2:
        raise UserError(f"{files.npy} has {rows} rows: neighbours need at least 2 images")
    if not 0 < k < rows:
        raise UserError(f"--k {k}: the embeddings have {rows} rows, so k is from 1 to {rows - 1}")
    if Path(out).suffix.lower() != ".png":
        raise UserError(f"--out {out} must end in .png")
    bank = np.load(files.npy, mmap_mode="r")
    if bank.ndim != 2 or len(bank) != rows:
        raise UserError(f"{files.npy} holds {bank.shape}, its card {rows} rows: rerun `repre embed --overwrite`")
    chosen = choose_queries(rows, queries, query_rows, seed)
    hits = dict(zip(chosen, nearest(bank, chosen, k, backend), strict=True))
    index = read_index(files.csv, set(chosen) | {r for h in hits.values() for r, _ in h}, rows)
    source, size = query_source(checkpoint, card, overrides or [])
    names = card.get("classes")
    save_png(neighbors_picture(source, index, hits, size, names), Path(out))
    results = [described(index, q, names, neighbors=[described(index, r, names, similarity=round(s, 6)) for r, s in h])
               for q, h in hits.items()]
    return {"command": "neighbors", "out": str(out), "embeddings": str(files.npy), "backend": backend, "k": k,
            "queries": results}
