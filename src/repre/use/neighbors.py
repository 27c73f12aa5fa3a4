"""`repre neighbors`: query images and their nearest images in a file of `repre embed`, as a picture.

Each row of the picture is a query (given as rows of FILE.npy, or drawn at random with a fixed seed) and its
k most similar rows (cosine similarity; the query itself left out), the similarity under each. The queries may
come from a second file of the same checkpoint (e.g. the test split's, against the training images' bank).
The images are read from the data the embeddings were made from: the checkpoint's config with the `--set`
overrides that embed was given (recorded in FILE.json), then the overrides given here.
"""

from __future__ import annotations

import filecmp
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repre.config import override_items, reads
from repre.core.pictures import Column, Picture, picture_path, save_picture, sheet, thumb_side, tile
from repre.core.search import top_k
from repre.data.labels import class_name
from repre.errors import UserError
from repre.pretrained import refuse_unread
from repre.use.embed import upgraded
from repre.use.images import EmbeddedImages, embedded_source, thumbnail
from repre.use.store import NOT_FINITE, EmbeddingFiles, finished_card, finished_rows, read_index

QUERY_GAP = 8  # extra pixels between the queries' column and their neighbours
NOTE = ("each row: a query image (#: its row in the embeddings file) and the images whose embeddings are nearest to "
        "its, nearest first, each with its cosine similarity to the query")  # under the picture
NOTE_OTHER = ("each row: a query image (#: its row in the queries' file, {queries}) and the images of {bank} whose "
              "embeddings are nearest to its, nearest first, each with its cosine similarity to the query")

log = logging.getLogger("repre")


DEFAULT_QUERIES = 8
MAX_QUERIES, MAX_K = 64, 32  # the picture's rows and columns (a larger one cannot be read, and takes GBs to draw)


def choose_queries(rows: int, count: int | None, given: list[int] | None, seed: int, name: str = "the embeddings",
                   ) -> list[int]:
    """The query rows of a file of `rows` rows (`name`): those `given`, checked, or `count` distinct rows drawn
    from `seed` (the same every time; None: `DEFAULT_QUERIES`, or every row of a smaller file)."""
    if given is not None and count is not None:
        raise UserError(f"--queries {count} and --query-index: give the rows, or how many to draw, not both")
    if given is not None and not given:
        raise UserError("--query-index names no row: give rows of the embeddings (0, 5, 9), or leave it out to "
                        "draw queries")
    count = min(DEFAULT_QUERIES, rows) if count is None else count
    if given:
        bad = [r for r in given if not 0 <= r < rows]
        if bad:
            raise UserError(f"--query-index {bad[0]} is not a row of {name} (0 to {rows - 1})")
        return list(dict.fromkeys(given))  # a row given twice is drawn once
    most = min(rows, MAX_QUERIES)
    if not 0 < count <= most:
        why = (f"{name} has {rows} rows" if rows <= MAX_QUERIES else
               f"the picture draws at most {MAX_QUERIES}, a row each")
        raise UserError(f"--queries {count}: {why}, so from 1 to {most}")
    return torch.randperm(rows, generator=torch.Generator().manual_seed(seed))[:count].tolist()


@dataclass
class Embedded:
    """A finished file of `repre embed` opened for search: its files, its card and its rows [N, D] (a memory
    map); `index` and `images` (its rows' lines and images) once read."""

    files: EmbeddingFiles
    card: dict[str, Any]
    rows: np.ndarray
    index: dict[int, tuple[int, str, int | None]] | None = None
    images: EmbeddedImages | None = None

    @classmethod
    def open(cls, path: str | Path) -> Embedded:
        files = EmbeddingFiles.of(path)
        card = finished_card(files)
        return cls(files, card, finished_rows(files, card))

    @property
    def names(self) -> list[str] | None:
        return self.card.get("classes")


def comparable(bank: Embedded, queries: Embedded) -> None:
    """Exit 2 unless two files hold features of one encoder (the same checkpoint and encoder), so that their
    cosine similarities mean something."""
    a, b = bank.card["identity"], queries.card["identity"]
    if (a["checkpoint_sha256"], a["encoder"], a["dim"]) != (b["checkpoint_sha256"], b["encoder"], b["dim"]):
        raise UserError(f"{queries.files.npy} and {bank.files.npy} were embedded by different checkpoints or "
                        f"encoders ({queries.card.get('checkpoint')} step {queries.card.get('step')}, "
                        f"{bank.card.get('checkpoint')} step {bank.card.get('step')}): one encoder's features are "
                        "not comparable with another's; embed both with the same checkpoint")


def same_images(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two identities (in today's terms) are of one split's images, read alike, each file's rows
    perhaps another selection of them (another `data.subset`): an image of both is the same image."""
    def apart_from_selection(identity: dict[str, Any]) -> dict[str, Any]:
        return {**identity, "images": None, "data": {**identity["data"], "subset": None}}

    return apart_from_selection(a) == apart_from_selection(b)


def split_index(side: Embedded, row: int) -> int:
    """A row's image -> its index among all of its split's images: a `data.subset` reads some of the training
    images (a test split's card records the run's subset, which it does not read)."""
    assert side.index is not None and side.images is not None  # read by `neighbors` first
    index = side.index[row][0]
    picked = getattr(side.images.source, "indices", None) if side.card["identity"]["data"].get("subset") else None
    return int(picked[index]) if picked is not None else index


def without_self(query: int, sims: torch.Tensor, rows: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """A query's k + 1 nearest (sims [k + 1], rows [k + 1]) -> its k nearest other rows: (row, similarity)."""
    hits = [(int(r), float(s)) for s, r in zip(sims, rows, strict=True) if int(r) != query]
    return hits[:k]


def nearest(bank: np.ndarray, queries: list[int], k: int,
            asked: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
    """bank [N, D] -> for each query row, its k nearest rows of the bank: [(row, cosine similarity), ...],
    nearest first. The queries are rows of `asked` [M, D] when given, else rows of the bank (themselves left
    out)."""
    if asked is not None:
        sims, found = top_k(bank, torch.from_numpy(np.array(asked[queries])), k)
        check_finite(sims)
        return [[(int(r), float(s)) for s, r in zip(si, fi, strict=True)] for si, fi in zip(sims, found, strict=True)]
    sims, found = top_k(bank, torch.from_numpy(np.array(bank[queries])), k + 1)
    check_finite(sims)
    return [without_self(q, s, f, k) for q, s, f in zip(queries, sims, found, strict=True)]


def check_finite(sims: torch.Tensor) -> None:
    """A UserError where a similarity is not finite: a row of the file is NaN or inf (embedded from a diverged
    checkpoint), and every ranking through it measures nothing."""
    if not torch.isfinite(sims).all():
        raise UserError(NOT_FINITE)


def neighbors_picture(queries: Embedded, bank: Embedded, hits: dict[int, list[tuple[int, float]]]) -> Picture:
    """A row per query: the query image, then its neighbours with their similarities (and classes, when known)
    under them. Four decimals: the features of a short run fill a narrow cone, so neighbours' similarities often
    differ only in the third or fourth."""
    def drawn(side: Embedded, row: int) -> torch.Tensor:
        assert side.index is not None and side.images is not None  # read by `neighbors` first
        return thumbnail(side.images, *side.index[row][:2])

    assert queries.index is not None and bank.index is not None and bank.images is not None  # as in `drawn`
    images = [[drawn(queries, q), *(drawn(bank, r) for r, _ in h)] for q, h in hits.items()]
    side = thumb_side(bank.images.size)
    captions = [[f"#{q}{class_caption(queries.index, q, queries.names)}",
                 *(f"{s:.4f}{class_caption(bank.index, r, bank.names)}" for r, s in h)] for q, h in hits.items()]
    titles = ["query", *(f"nearest {c}" if c == 1 else str(c) for c in range(1, len(images[0])))]
    note = NOTE if queries is bank else NOTE_OTHER.format(queries=queries.files.npy.name, bank=bank.files.npy.name)
    return sheet([Column([tile(row[c], side) for row in images], titles[c], captions=[row[c] for row in captions])
                  for c in range(len(images[0]))], gap=QUERY_GAP, notes=[note])


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


def neighbors(checkpoint: str | Path | None, embeddings: str | Path, out: str | Path, *,
              overrides: Sequence[str] | None = None, queries: int | None = None, k: int = 5,
              query_rows: list[int] | None = None, seed: int = 0,
              query_embeddings: str | Path | None = None) -> dict[str, Any]:
    """Draw into `out` (.png, .svg or .pdf): each row a query and its k nearest rows of `embeddings` (FILE.npy of `repre
    embed`), the images read with `checkpoint`'s data config (None: the checkpoint embed read). The queries are
    rows of `query_embeddings` (another file of the same checkpoint) when given, else of `embeddings` (each
    query left out of its own neighbours): `query_rows`, or `queries` rows (None: 8, or all of fewer) drawn
    with `seed`. Returns
    {"command": "neighbors", "out", "embeddings", "query_embeddings", "k", "queries": [{"row",
    "index", "path", "label", "class", "neighbors": [{"row", "index", "path", "label", "class", "similarity"},
    ...]}, ...], "same_class": the share of the neighbours whose label is their query's, or None without
    labels}."""
    refuse_unread("repre neighbors", override_items(overrides), reads.IMAGES)
    path = picture_path(out)
    bank = Embedded.open(embeddings)
    asked = Embedded.open(query_embeddings) if query_embeddings is not None else bank
    comparable(bank, asked)
    theirs, ours = asked.card["identity"], bank.card["identity"]  # in today's terms (a card of an older repre)
    if asked is not bank and (asked.files.npy.resolve() == bank.files.npy.resolve()
                              or upgraded(theirs, ours) == upgraded(ours, theirs)
                              # a copy: one embedding of the same images may have skipped other unreadable ones
                              and filecmp.cmp(asked.files.csv, bank.files.csv, shallow=False)):
        log.info("%s holds the rows of %s: each query is left out of its own neighbours", asked.files.npy,
                 bank.files.npy)
        asked = bank  # the same rows (the file, a link to it or a copy)
    own = asked is bank  # the queries are rows of the bank: each is left out of its own neighbours
    # another selection of the same images (another data.subset): a query is left out where the bank holds it
    alike = not own and same_images(upgraded(theirs, ours), upgraded(ours, theirs))
    if (own or alike) and len(bank.rows) < 2:
        raise UserError(f"{bank.files.npy} has {len(bank.rows)} rows: neighbours need at least 2 images")
    most = min(len(bank.rows) - (own or alike), MAX_K)
    if not 0 < k <= most:
        less = ", less the query's own" if own or alike else ""
        raise UserError(f"--k {k}: the embeddings have {len(bank.rows)} rows{less} and the picture takes at most "
                        f"{MAX_K} neighbours a query, so k is from 1 to {most}")
    chosen = choose_queries(len(asked.rows), queries, query_rows, seed, asked.files.npy.name)
    if len(chosen) > MAX_QUERIES:
        raise UserError(f"{len(chosen)} queries: the picture draws at most {MAX_QUERIES}, a row each (a taller one "
                        "cannot be read); draw them in several pictures (--query-index, --seed)")
    hits = dict(zip(chosen, nearest(bank.rows, chosen, k + alike, None if own else asked.rows), strict=True))
    found = {r for h in hits.values() for r, _ in h}
    bank.index = read_index(bank.files.csv, found | (set(chosen) if own else set()), len(bank.rows))
    bank.images = embedded_source(checkpoint, bank.card, overrides or [], bank.files.npy)
    if not own:
        asked.index = read_index(asked.files.csv, set(chosen), len(asked.rows))
        asked.images = embedded_source(checkpoint, asked.card, overrides or [], asked.files.npy)
    assert asked.index is not None  # read above, or the bank's (the same object)
    if alike:
        log.info("%s and %s hold other selections of the same images: a query is left out of its neighbours "
                 "where both hold it", asked.files.npy, bank.files.npy)
        hits = {q: [(r, sim) for r, sim in h if split_index(bank, r) != split_index(asked, q)][:k]
                for q, h in hits.items()}
    save_picture(neighbors_picture(asked, bank, hits), path)
    results = [described(asked.index, q, asked.names,
                         neighbors=[described(bank.index, r, bank.names, similarity=round(s, 6)) for r, s in h])
               for q, h in hits.items()]
    return {"command": "neighbors", "out": str(out), "embeddings": str(bank.files.npy),
            "query_embeddings": None if query_embeddings is None else str(query_embeddings), "k": k,
            "queries": results, "same_class": same_class(results, two_files=not own)}


def same_class(queries: list[dict[str, Any]], two_files: bool = False) -> float | None:
    """The share of the labelled queries' neighbours that have their query's class (a retrieval precision at
    k): by name where both are named, else by label, which two files (`two_files`) need not order alike: there
    a pair named on one side alone is left out. None when no query and neighbour are comparable."""
    def named(item: dict[str, Any]) -> bool:
        return item.get("class") is not None

    pairs = [q["class"] == n["class"] if named(q) and named(n) else q["label"] == n["label"]
             for q in queries for n in q["neighbors"]
             if q["label"] is not None and n["label"] is not None and not (two_files and named(q) != named(n))]
    return sum(pairs) / len(pairs) if pairs else None
