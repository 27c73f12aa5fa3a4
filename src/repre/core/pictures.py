"""Sheets of image tiles in columns, each column with an optional title above it and captions under its tiles,
and notes under the sheet that say how to read it: the one layout of every picture repre draws (recon.png,
`repre show`, `repre neighbors`; `repre map` draws its own on the same `Picture`).

A `Picture` keeps the operations that draw it: PIL replays them into a PNG, matplotlib (optional) into an SVG
or a PDF whose text stays text (sharp at any size, editable, and found by a search), the tiles embedded as the
PNG draws them."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from repre.core.atomic import replacing
from repre.errors import UserError

log = logging.getLogger("repre")

PAD = 4  # pixels between tiles and around the sheet
HEADER = 24  # the strip above the tiles for the columns' group names (one line) and titles (the next)
CAPTION = 14  # the strip under each tile for its caption
NOTE_LINE = 12  # a line of the notes under the sheet
FORMATS = (".png", ".svg", ".pdf")  # what `--out` of show, neighbors and map may end in
# The vector text's size in points (a pixel each): matplotlib's DejaVu Sans is wider than the 10 px font PIL
# draws with (Pillow's Aileron); at 9 pt it is as wide, so what `fitted` and `wrapped` fit in the PNG fits in
# the SVG and the PDF.
VECTOR_FONT_SIZE = 9

Colour = str | tuple[int, int, int]  # PIL's: a name, or 0-255 RGB


class Tile(NamedTuple):
    """An RGB image pasted with its top-left corner at `xy`."""

    image: Image.Image
    xy: tuple[int, int]


class Text(NamedTuple):
    """A line of text (PIL's default font) with its top-left corner at `xy`."""

    xy: tuple[float, float]
    text: str
    fill: Colour


class Dot(NamedTuple):
    """A filled circle."""

    centre: tuple[float, float]
    diameter: float
    fill: Colour


class Box(NamedTuple):
    """A filled rectangle (x0, y0, x1, y1)."""

    corners: tuple[float, float, float, float]
    fill: Colour


@dataclass
class Picture:
    """A picture `size` (width, height) pixels on white, as the operations that draw it, in order."""

    size: tuple[int, int]
    ops: list[Tile | Text | Dot | Box] = field(default_factory=list)

    def paste(self, image: Image.Image, xy: tuple[int, int]) -> None:
        self.ops.append(Tile(image if image.mode == "RGB" else image.convert("RGB"), xy))

    def text(self, xy: tuple[float, float], text: str, fill: Colour = "black") -> None:
        self.ops.append(Text(xy, text, fill))

    def dot(self, centre: tuple[float, float], diameter: float, fill: Colour) -> None:
        self.ops.append(Dot(centre, diameter, fill))

    def rectangle(self, corners: tuple[float, float, float, float], fill: Colour) -> None:
        self.ops.append(Box(corners, fill))

    def raster(self) -> Image.Image:
        """The picture drawn by PIL (what the PNG holds, and TensorBoard shows)."""
        picture = Image.new("RGB", self.size, "white")
        pen, font = ImageDraw.Draw(picture), ImageFont.load_default()
        for op in self.ops:
            if isinstance(op, Tile):
                picture.paste(op.image, op.xy)
            elif isinstance(op, Text):
                pen.text(op.xy, op.text, fill=op.fill, font=font)
            elif isinstance(op, Dot):
                (x, y), r = op.centre, op.diameter / 2
                pen.ellipse((x - r, y - r, x + r, y + r), fill=op.fill)
            else:
                pen.rectangle(op.corners, fill=op.fill)
        return picture


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
    """[C, h, w] (C 1 or 3; float in [0, 1], or uint8) -> a side x side RGB tile: enlarged nearest (pixels and
    patches stay sharp) unless `smooth` (bilinear); shrunk antialiased (a 224 px image in a 96 px tile: a
    plain resize keeps every few pixels, and fine stripes turn to moire)."""
    x = image.float() / 255 if image.dtype == torch.uint8 else image.float().clamp(0, 1)
    x = x.expand(3, -1, -1)[None]
    if max(x.shape[-2:]) > side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    else:
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


def sheet(columns: list[Column], gap: int = 0, notes: Sequence[str] = ()) -> Picture:
    """Columns of tiles -> one picture; `gap` more pixels set the first column apart (e.g. the queries);
    `notes`, how to read the picture, under it, each wrapped to its width. Every column has as many tiles, all
    of one side, as the first."""
    side, rows = columns[0].tiles[0].width, len(columns[0].tiles)
    titled = any(c.title or c.group for c in columns)
    captioned = any(c.captions for c in columns)
    size = sheet_size(rows, len(columns), side, titled, captioned, gap, notes)
    picture = Picture(size)
    pen, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), ImageFont.load_default()  # to measure text
    lines = note_lines(notes, size[0])
    for i, line in enumerate(lines):  # under the tiles, the last line PAD above the bottom
        picture.text((PAD, size[1] - PAD - (len(lines) - i) * NOTE_LINE), line)
    top = PAD + titled * HEADER
    for c, column in enumerate(columns):
        x = PAD + c * (side + PAD) + (gap if c else 0)
        if column.group and (c == 0 or columns[c - 1].group != column.group):
            picture.text((x, 2), column.group)  # spans the group's columns
        if column.title:  # over the tile's width and most of the gap after it, as the captions
            picture.text((x, 14), fitted(pen, column.title, font, side + PAD - 3))
        captions = column.captions or [""] * rows
        for r, (picture_tile, text) in enumerate(zip(column.tiles, captions, strict=True)):
            y = top + r * (side + captioned * CAPTION + PAD)
            picture.paste(picture_tile, (x, y))
            if text:
                # over the tile's width and most of the gap after it
                picture.text((x + 1, y + side + 1), fitted(pen, text, font, side + PAD - 3))
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


def picture_path(out: str | Path) -> Path:
    """`--out` of a picture, checked before anything is computed: it ends in .png, .svg or .pdf, and the last
    two find matplotlib."""
    path = Path(out).expanduser()
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"--out {out} must end in {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")
    if suffix != ".png":
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError(f"--out {out}: {suffix[1:].upper()} pictures need matplotlib: "
                            "pip install 'repre[figures]' (or give a .png)") from None
    return path


def save_picture(picture: Picture, path: Path) -> None:
    """Write `picture` to `path` in the format its suffix names (.png, .svg or .pdf: `picture_path`), whole or
    not at all (a process stopped while writing leaves the old file)."""
    fmt = path.suffix.lower()[1:]
    if f".{fmt}" not in FORMATS:
        raise ValueError(f"{path}: a picture is a {', '.join(FORMATS)}")
    with replacing(path) as tmp:
        if fmt == "png":
            picture.raster().save(tmp, format="PNG")
        else:
            save_vector(picture, tmp, fmt)


def save_vector(picture: Picture, path: Path, fmt: str) -> None:
    """`picture` as an SVG or a PDF through matplotlib, a pixel a point: the tiles as images, the text as text
    (SVG: <text> elements; PDF: the font embedded as TrueType, which journals ask for, not Type 3). matplotlib's
    own defaults, whatever the user's matplotlibrc says (`savefig.bbox: tight` would crop the page)."""
    import matplotlib
    import matplotlib.style
    from matplotlib.figure import Figure

    width, height = picture.size
    font = ImageFont.load_default()
    ascent = font.getmetrics()[0] if isinstance(font, ImageFont.FreeTypeFont) else 9  # PIL's y: the ascender's
    with matplotlib.style.context("default"), matplotlib.rc_context({  # the same picture, the same SVG ids
        "svg.fonttype": "none", "pdf.fonttype": 42, "font.family": ["DejaVu Sans", "sans-serif"],
        "svg.hashsalt": "repre",
    }):
        fig = Figure(figsize=(width / 72, height / 72), dpi=72, facecolor="white")
        fig.suppressComposite = True  # each tile an image of its own (one to move in an editor), not one merged
        for kind, ops in itertools.groupby(picture.ops, key=type):  # runs of one type each (as the casts say)
            if kind is Dot:
                fig.add_artist(dot_collection(cast(list[Dot], list(ops)), height))
            else:
                for op in cast(Iterator[Tile | Text | Box], ops):
                    draw_vector(fig, op, picture.size, ascent)
        metadata = {"Date": None} if fmt == "svg" else {"CreationDate": None}  # no clock: the same bytes
        fig.savefig(path, format=fmt, dpi=72, metadata=metadata)


def draw_vector(fig: Any, op: Tile | Text | Box, size: tuple[int, int], ascent: int) -> None:
    """One operation on a matplotlib Figure of `size` (width, height) points, a pixel a point (its y axis points
    up, PIL's down)."""
    from matplotlib.patches import Rectangle
    from matplotlib.transforms import IdentityTransform

    width, height = size
    if isinstance(op, Tile):
        x, y = op.xy
        fig.figimage(np.asarray(op.image), xo=x, yo=height - y - op.image.height, origin="upper")
    elif isinstance(op, Text):  # on the PNG's baseline; "$" is a dollar sign, not mathtext
        left, top = op.xy
        fig.text(left / width, 1 - (top + ascent) / height, op.text, color=colour(op.fill),
                 fontsize=VECTOR_FONT_SIZE, ha="left", va="baseline", parse_math=False)
    else:
        x0, y0, x1, y1 = op.corners
        fig.add_artist(Rectangle((x0, height - y1), x1 - x0, y1 - y0, transform=IdentityTransform(),
                                 facecolor=colour(op.fill), edgecolor="none"))


def dot_collection(dots: list[Dot], height: int) -> Any:
    """A run of dots as one matplotlib collection: a circle drawn once and placed at each centre (an SVG `use`
    each), where a path a dot would write each circle out again."""
    from matplotlib.collections import CircleCollection
    from matplotlib.transforms import IdentityTransform

    areas = [d.diameter**2 * np.pi / 4 for d in dots]  # points^2
    return CircleCollection(areas[:1] if len(set(areas)) == 1 else areas,  # one size: one circle to place
                            offsets=[(d.centre[0], height - d.centre[1]) for d in dots],
                            offset_transform=IdentityTransform(), facecolors=[colour(d.fill) for d in dots],
                            edgecolors="none")


def colour(fill: Colour) -> Any:
    """A PIL colour (a name, or 0-255 RGB) as matplotlib takes it."""
    return tuple(c / 255 for c in fill) if isinstance(fill, tuple) else fill


def save_result_picture(picture: Picture, path: Path, extra: dict[str, Any]) -> None:
    """An evaluation's picture: written to `path` and named in its result's `extra["picture"]`; one that
    cannot be written (a full disk, no permission) is warned of, and the result stands without it."""
    try:
        save_picture(picture, path)
    except OSError as exc:
        log.warning("the picture %s was not written (%s); the result follows", path, exc)
        return
    extra["picture"] = str(path)
