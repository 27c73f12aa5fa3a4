"""A 2-D map of an embedding file (`repre map`): t-SNE (scikit-learn) or UMAP, drawn as a scatter coloured by
label, or as thumbnails of the images where there are no labels. Above `limit` points a fixed-seed random
subset is drawn, and the result says so."""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from repre.config import override_items, reads
from repre.core.pictures import Picture, picture_path, save_picture
from repre.errors import UserError
from repre.pretrained import refuse_unread
from repre.use.images import embedded_source, thumbnail
from repre.use.store import NOT_FINITE, EmbeddingFiles, finished_card, finished_rows, read_index

SIZE = 1000  # the map's side in pixels (thumbnail maps: 1400)
METHODS = ("tsne", "umap")
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}

log = logging.getLogger("repre")


def subsample(n: int, limit: int, seed: int) -> np.ndarray:
    """Row numbers to draw: all n, or a sorted random `limit` of them drawn with `seed`."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def layout(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    """Embeddings [n, D] -> 2-D positions [n, 2] in [0, 1] (t-SNE with cosine distances, or UMAP)."""
    if method not in METHODS:
        raise UserError(f"unknown map method {method!r}; choose from {', '.join(METHODS)}")
    if len(x) < 3:
        raise UserError(f"a map needs at least 3 embeddings, the file has {len(x)}")
    if not np.isfinite(x).all():
        raise UserError(NOT_FINITE)
    try:  # before saying it runs: a missing package is the first thing to hear
        if method == "tsne":
            from sklearn.manifold import TSNE
        else:
            import umap
    except ImportError:
        extra = "map" if method == "tsne" else "umap"
        raise UserError(f"--method {method} needs {'scikit-learn' if method == 'tsne' else 'umap-learn'}: "
                        f"pip install 'repre[{extra}]'") from None
    log.info("%s of %d embeddings%s", METHOD_NAMES[method], len(x),
             " (about a minute for 5,000 on 2 CPU cores)" if method == "tsne" else "")
    if method == "tsne":
        perplexity = min(30.0, (len(x) - 1) / 3)
        points = TSNE(2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)
    else:
        points = umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(x)
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - lo) / np.maximum(hi - lo, 1e-12)


# Tableau's 10 categorical colours (matplotlib's tab10): neighbouring classes in different hues
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def palette(n: int) -> list[tuple[int, int, int]]:
    """n distinguishable colours: tab10's for up to 10 classes, else hues evenly spaced at two lightness
    levels."""
    if n <= len(TAB10):
        return [(int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)) for c in TAB10[:n]]  # "#rrggbb"
    hues = [colorsys.hls_to_rgb(i / n, 0.45 + 0.15 * (i % 2), 0.75) for i in range(n)]
    return [(round(255 * r), round(255 * g), round(255 * b)) for r, g, b in hues]


MANY_CLASSES = 20  # above this, a map by label is a map of hues that cannot be told apart


def draw_scatter(points: np.ndarray, labels: Sequence[int], names: dict[int, str], path: Path,
                 note: Sequence[str] = ()) -> None:
    """Positions [n, 2] in [0, 1], one label each -> a scatter with a legend, `note` (lines: what the map is
    of) under it."""
    classes = sorted(set(labels))
    colours = dict(zip(classes, palette(len(classes)), strict=True))
    fits = (SIZE - 10) // 14 - len(note) - 1  # legend lines beside the map, the note's under them
    shown = classes if len(classes) <= fits else classes[:fits - 1]
    picture = Picture((SIZE + 180, SIZE))
    for (u, v), label in zip(points, labels, strict=True):
        x, y = 10 + u * (SIZE - 20), 10 + v * (SIZE - 20)
        picture.dot((x, y), 5, fill=colours[label])
    for i, label in enumerate(shown):
        top = 10 + 14 * i
        picture.rectangle((SIZE + 10, top, SIZE + 20, top + 10), fill=colours[label])
        picture.text((SIZE + 26, top - 1), names.get(label, str(label))[:24])
    below = len(shown) + 1  # the note's first line: a blank line under the legend
    if len(shown) < len(classes):
        picture.text((SIZE + 10, 10 + 14 * len(shown)), f"and {len(classes) - len(shown):,} more classes",
                     fill="dimgray")
        below += 1
    for i, line in enumerate(note):
        picture.text((SIZE + 10, 10 + 14 * (below + i)), line[:28], fill="dimgray")
    save_picture(picture, path)


def draw_thumbnails(points: np.ndarray, thumbnail: Callable[[int], Image.Image], rows: Sequence[int],
                    path: Path, about: Sequence[str] = (), side: int = 32) -> None:
    """Positions [n, 2] in [0, 1] -> each image's thumbnail (`thumbnail(row)`, side x side) at its place, and
    the lines of `about` under them."""
    size, line = 1400, 14
    footer = line * len(about) + 10 if about else 0
    picture = Picture((size + side, size + side + footer))
    for (u, v), row in zip(points, rows, strict=True):
        picture.paste(thumbnail(row).convert("RGB").resize((side, side)), (round(u * size), round(v * size)))
    for i, text in enumerate(about):
        picture.text((8, size + side + 5 + line * i), text)
    save_picture(picture, path)


def embedding_map(embeddings: np.ndarray, labels: Sequence[int | None], out: str | Path, method: str = "tsne",
                  limit: int = 5000, seed: int = 0, names: dict[int, str] | None = None,
                  thumbnail: Callable[[int], Image.Image] | None = None, about: Sequence[str] = ()) -> dict[str, Any]:
    """Map embeddings [N, D] (labels: one per row, None where unknown) into the picture `out` (.png, .svg or
    .pdf): a scatter by label when every drawn row has one, else thumbnails (`thumbnail(row)` -> a PIL image;
    required then). `about`: lines under the scatter's legend saying what the embeddings are."""
    if limit < 3:
        raise UserError(f"--max-points {limit}: draw at least 3 points")
    path = picture_path(out)
    rows = subsample(len(embeddings), limit, seed)
    points = layout(np.asarray(embeddings[rows], dtype=np.float32), method, seed)
    drawn = [labels[r] for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = f"{len(rows):,} of {len(embeddings):,} rows" if len(rows) < len(embeddings) else f"{len(rows):,} rows"
    about = [*about, f"{METHOD_NAMES.get(method, method)}, {shown}"]
    if all(label is not None for label in drawn):
        if len(set(drawn)) > MANY_CLASSES:
            log.warning("%d classes drawn: so many colours cannot be told apart (the legend names the first); "
                        "--thumbnails draws the images", len(set(drawn)))
        draw_scatter(points, drawn, names or {}, path, about)
        kind = "scatter"
    elif thumbnail is not None:
        draw_thumbnails(points, thumbnail, rows.tolist(), path, about)
        kind = "thumbnails"
    else:
        raise UserError("the embeddings have no labels: give --checkpoint RUN so the map can show the images")
    return {"command": "map", "out": str(path), "method": method, "kind": kind, "points": len(rows),
            "embeddings": len(embeddings), "subsampled": len(rows) < len(embeddings), "seed": seed}


def map_file(embeddings: str | Path, out: str | Path, *, checkpoint: str | Path | None = None, method: str = "tsne",
             limit: int = 5000, seed: int = 0, overrides: Sequence[str] | None = None,
             thumbnails: bool = False) -> dict[str, Any]:
    """`repre map`: the map of an embedding file written by `repre embed` (its rows, labels from its index);
    where there are no labels, or with `thumbnails`, thumbnails of the images, read with `checkpoint`'s data
    config (None: the checkpoint embed read)."""
    refuse_unread("repre map", override_items(overrides), reads.IMAGES)  # the thumbnails' images
    picture_path(out)  # before the images are read
    files = EmbeddingFiles.of(embeddings)
    card = finished_card(files)
    bank = finished_rows(files, card)
    index = read_index(files.csv, set(range(len(bank))), len(bank))
    labels = [index[r][2] for r in range(len(bank))]
    picture = None
    if (overrides or checkpoint) and not (thumbnails or None in labels):
        given = f"--set {', '.join(override_items(overrides))}" if overrides else f"--checkpoint {checkpoint}"
        raise UserError(f"{given}: the map of labelled rows draws points, no images; --thumbnails draws the "
                        "images, which --checkpoint and --set data.* read")
    if thumbnails or None in labels:  # thumbnails, read with the card's checkpoint by default
        images = embedded_source(checkpoint, card, override_items(overrides), files.npy)

        def picture(row: int) -> Image.Image:
            view = thumbnail(images, *index[row][:2])  # uint8 [3, S, S]
            return Image.fromarray(view.permute(1, 2, 0).numpy())

    names = dict(enumerate(card.get("classes") or []))  # the legend's names
    about = [Path(files.npy).name, f"{card['identity']['split']} split, step {card.get('step', '?')}"]
    result = embedding_map(bank, [None] * len(bank) if thumbnails else labels, out, method, limit, seed,
                           names=names, thumbnail=picture, about=about)
    return {**result, "embeddings_file": str(files.npy)}
