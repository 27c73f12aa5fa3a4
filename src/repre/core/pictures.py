"""Sheets of image tiles in columns, each column with an optional title above it and captions under its tiles,
and notes under the sheet that say how to read it: the one layout of every picture repre draws (recon.png,
`repre show`, `repre neighbors`). PIL only, no plotting library."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from repre.core.atomic import replacing

log = logging.getLogger("repre")

PAD = 4  # pixels between tiles and around the sheet
HEADER = 24  # the strip above the tiles for the columns' group names (one line) and titles (the next)
CAPTION = 14  # the strip under each tile for its caption
NOTE_LINE = 12  # a line of the notes under the sheet


@dataclass
class Column:
    """One column of a sheet: equal square tiles top to bottom, a title, the group it belongs to (written once
    above the group's first column) and a caption under each tile."""

    tiles: list[Image.Image]
    title: str = ""
    group: str = ""
    captions: list[str] | None = None


def thumb_side(size: int) -> int:
    """The side at which images of side `size` are drawn: small ones upscaled by the whole factor nearest
    96 / size, a half rounded up (28 px: 84; 64 px: 128, where a class name under a 64 px tile was cut), larger
    ones as they are."""
    return size * max(1, int(96 / size + 0.5))


def tile(image: torch.Tensor, side: int, smooth: bool = False) -> Image.Image:
    """[C, h, w] (C 1 or 3; float in [0, 1], or uint8) -> a side x side RGB tile; nearest (pixels and patches
    stay sharp) unless `smooth` (bilinear)."""
    x = image.float() / 255 if image.dtype == torch.uint8 else image.float().clamp(0, 1)
    x = x.expand(3, -1, -1)[None]
    x = F.interpolate(x, size=(side, side), mode="bilinear" if smooth else "nearest",
                      **({"align_corners": False} if smooth else {}))
    return Image.fromarray((x[0].permute(1, 2, 0) * 255).round().byte().cpu().numpy())


def sheet_size(rows: int, cols: int, side: int, titled: bool = False, captioned: bool = False,
               gap: int = 0, notes: Sequence[str] = ()) -> tuple[int, int]:
    """(width, height) of a `sheet` of `rows` x `cols` tiles of side `side`, with `notes` under it."""
    width = PAD + cols * (side + PAD) + gap
    tiles_height = PAD + titled * HEADER + rows * (side + captioned * CAPTION + PAD)
    lines = note_lines(notes, width)
    return width, tiles_height + len(lines) * NOTE_LINE + bool(lines) * PAD


def note_lines(notes: Sequence[str], width: int) -> list[str]:
    """`notes` in lines that fit a sheet `width` pixels wide."""
    font = ImageFont.load_default()
    return [line for note in notes for line in wrapped(note, font, width - 2 * PAD)]


def sheet(columns: list[Column], gap: int = 0, notes: Sequence[str] = ()) -> Image.Image:
    """Columns of tiles -> one RGB picture; `gap` more pixels set the first column apart (e.g. the queries);
    `notes`, how to read the picture, under it, each wrapped to its width. Every column has as many tiles, all
    of one side, as the first."""
    side, rows = columns[0].tiles[0].width, len(columns[0].tiles)
    titled = any(c.title or c.group for c in columns)
    captioned = any(c.captions for c in columns)
    size = sheet_size(rows, len(columns), side, titled, captioned, gap, notes)
    picture = Image.new("RGB", size, "white")
    pen, font = ImageDraw.Draw(picture), ImageFont.load_default()
    lines = note_lines(notes, size[0])
    for i, line in enumerate(lines):  # under the tiles, the last line PAD above the bottom
        pen.text((PAD, size[1] - PAD - (len(lines) - i) * NOTE_LINE), line, fill="black", font=font)
    top = PAD + titled * HEADER
    for c, column in enumerate(columns):
        x = PAD + c * (side + PAD) + (gap if c else 0)
        if column.group and (c == 0 or columns[c - 1].group != column.group):
            pen.text((x, 2), column.group, fill="black", font=font)  # spans the group's columns
        if column.title:  # over the tile's width and most of the gap after it, as the captions
            pen.text((x, 14), fitted(pen, column.title, font, side + PAD - 3), fill="black", font=font)
        captions = column.captions or [""] * rows
        for r, (picture_tile, text) in enumerate(zip(column.tiles, captions, strict=True)):
            y = top + r * (side + captioned * CAPTION + PAD)
            picture.paste(picture_tile, (x, y))
            if text:
                # over the tile's width and most of the gap after it
                pen.text((x + 1, y + side + 1), fitted(pen, text, font, side + PAD - 3), fill="black", font=font)
    return picture


def wrapped(text: str, font, width: int) -> list[str]:
    """`text` in lines of at most `width` pixels, broken between words (a longer word keeps a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def fitted(pen: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, or as much of it as fits `width` pixels followed by ".." (ASCII: Pillow's bitmap font, its
    default before 10.1, has no ellipsis)."""
    if pen.textlength(text, font=font) <= width:
        return text
    while text and pen.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".." if text else ""


def save_png(picture: Image.Image, path: Path) -> None:
    """Write `picture` to `path` whole or not at all (a process stopped while writing leaves the old file)."""
    with replacing(path) as tmp:
        picture.save(tmp, format="PNG")


def save_result_picture(picture: Image.Image, path: Path, extra: dict[str, Any]) -> None:
    """An evaluation's picture: written to `path` and named in its result's `extra["picture"]`; one that
    cannot be written (a full disk, no permission) is warned of, and the result stands without it."""
    try:
        save_png(picture, path)
    except OSError as exc:
        log.warning("the picture %s was not written (%s); the result follows", path, exc)
        return
    extra["picture"] = str(path)
