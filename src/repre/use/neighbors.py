"""`repre neighbors`: query images and their nearest images in a file of `repre embed`, as a picture.

Each row of the picture is a query (given as rows of FILE.npy, or drawn at random with a fixed seed) and its
k most similar rows (cosine similarity; the query itself left out), the similarity under each. The images are
read from the data the embeddings were made from: the checkpoint's config with the `--set` overrides that
embed was given (recorded in FILE.json), then the overrides given here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from repre.config import reads
from repre.core.pictures import Column, save_png, sheet, thumb_side, tile
from repre.data.sources import ImageSource, class_name
from repre.errors import UserError
from repre.pretrained import refuse_unread
from repre.use.images import embedded_source, thumbnail
from repre.use.search import top_k
from repre.use.store import EmbeddingFiles, finished_card, read_index

QUERY_GAP = 8  # extra pixels between the queries' column and their neighbours
NOTE = ("each row: a query image (#: its row in the embeddings file) and the images whose embeddings are nearest to "
        "its, nearest first, each with its cosine similarity to the query")  # under the picture

log = logging.getLogger("repre")


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
    captions = [[f"#{q}{class_caption(index, q, names)}", *(f"{s:.4f}{class_caption(index, r, names)}" for r, s in h)]
                for q, h in hits.items()]
    titles = ["query", *(f"nearest {c}" if c == 1 else str(c) for c in range(1, len(images[0])))]
    return sheet([Column([tile(row[c], side) for row in images], titles[c], captions=[row[c] for row in captions])
                  for c in range(len(images[0]))], gap=QUERY_GAP, notes=[NOTE])


def class_caption(index: dict, row: int, names: list[str] | None) -> str:
    """' NAME' (the row's class name) or ' (label)' when its label is known, else ''."""
    label = index[row][2]
    if label is None:
        return ""
    name = class_name(names, label)
    return f" {name}" if name is not None else f" ({label})"


def described(index: dict, row: int, names: list[str] | None, **more: Any) -> dict[str, Any]:
    """A row of the embeddings as the JSON line gives it: its source index, path, label and the label's name."""
    i, path, label = index[row]
    return {"row": row, "index": i, "path": path, "label": label, "class": class_name(names, label), **more}


def neighbors(checkpoint: str | Path | None, embeddings: str | Path, out: str | Path,
              overrides: list[str] | None = None, queries: int = 8, k: int = 5,
              query_rows: list[int] | None = None, seed: int = 0, backend: str = "torch") -> dict[str, Any]:
    """Write a PNG to `out`: each row a query of `embeddings` (FILE.npy of `repre embed`) and its k nearest
    rows, the images read with `checkpoint`'s data config (None: the checkpoint embed read). `query_rows`:
    rows of FILE.npy (default: `queries` rows drawn with `seed`). Returns {"command": "neighbors", "out",
    "backend", "k", "queries": [{"row", "index", "path", "label", "class", "neighbors": [{"row", "index",
    "path", "label", "class", "similarity"}, ...]}, ...], "same_class": the share of the neighbours whose label
    is their query's, or None without labels}."""
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
    source, size = embedded_source(checkpoint, card, overrides or [])
    names = card.get("classes")
    save_png(neighbors_picture(source, index, hits, size, names), Path(out))
    results = [described(index, q, names, neighbors=[described(index, r, names, similarity=round(s, 6)) for r, s in h])
               for q, h in hits.items()]
    return {"command": "neighbors", "out": str(out), "embeddings": str(files.npy), "backend": backend, "k": k,
            "queries": results, "same_class": same_class(results)}


def same_class(queries: list[dict[str, Any]]) -> float | None:
    """The share of the labelled queries' neighbours that have their query's label (a retrieval precision at
    k); None when no query and neighbour both have a label."""
    pairs = [(q["label"], n["label"]) for q in queries for n in q["neighbors"]
             if q["label"] is not None and n["label"] is not None]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None
