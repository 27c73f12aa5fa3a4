"""Pictures of image rows with a caption under each image (PIL only: no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

PAD = 4  # pixels between cells and around the grid
CAPTION = 14  # the caption strip under each image
GAP = 8  # extra space after the first column (the queries)


def thumb_size(size: int) -> int:
    """The side at which images of side `size` are drawn: small ones upscaled (nearest) to about 96 pixels."""
    return size * max(1, 96 // size)


def grid_size(rows: int, cols: int, thumb: int) -> tuple[int, int]:
    """(width, height) of a `captioned_grid` of `rows` x `cols` images of side `thumb`."""
    return PAD + cols * (thumb + PAD) + GAP, PAD + rows * (thumb + CAPTION + PAD)


def captioned_grid(images: list[list[torch.Tensor]], captions: list[list[str]]) -> Image.Image:
    """Rows of uint8 [3, S, S] images, each with its caption below -> one RGB picture; the first column is set
    apart (the queries). Every row has as many images as the first."""
    side = images[0][0].shape[-1]
    thumb = thumb_size(side)
    picture = Image.new("RGB", grid_size(len(images), len(images[0]), thumb), "white")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for r, (row, texts) in enumerate(zip(images, captions, strict=True)):
        y = PAD + r * (thumb + CAPTION + PAD)
        for c, (img, text) in enumerate(zip(row, texts, strict=True)):
            x = PAD + c * (thumb + PAD) + (GAP if c else 0)
            cell = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).resize((thumb, thumb), Image.NEAREST)
            picture.paste(cell, (x, y))
            draw.text((x + 1, y + thumb + 1), text, fill="black", font=font)
    return picture


def save_picture(picture: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
