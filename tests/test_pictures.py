"""The pictures' one layout (`repre.core.pictures`): tiles, titles, captions and notes, drawn as a PNG, an SVG or
a PDF."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from repre.core.pictures import (
    HEADER,
    PAD,
    Column,
    Picture,
    fitted,
    picture_path,
    save_picture,
    sheet,
    sheet_size,
    thumb_side,
    tile,
)
from repre.errors import UserError

TEXTS = ["run a", "image", "recon", "0.91 Ankle boot", "0.52 Sandal", "each row an image"]


def two_by_two() -> Picture:
    g = torch.Generator().manual_seed(0)
    tiles = [[tile(torch.rand(1, 8, 8, generator=g), 96) for _ in range(2)] for _ in range(2)]
    return sheet([Column(tiles[0], "image", "run a", ["0.91 Ankle boot", "0.52 Sandal"]),
                  Column(tiles[1], "recon", "run a")], notes=[TEXTS[-1]])


def test_a_sheet_is_the_same_picture_as_png_svg_and_pdf(tmp_path):
    """One layout, three files: the PNG at the sheet's size; the SVG and the PDF as large in points, each tile
    an image of its own and the text as text (SVG: the strings; PDF: an embedded TrueType font, not Type 3)."""
    picture = two_by_two()
    width, height = sheet_size(2, 2, 96, titled=True, captioned=True, notes=[TEXTS[-1]])
    assert picture.size == (width, height)
    for suffix in ("png", "svg", "pdf"):
        save_picture(picture, tmp_path / f"s.{suffix}")
    with Image.open(tmp_path / "s.png") as png:
        assert png.size == (width, height)
    svg = ET.parse(tmp_path / "s.svg").getroot()
    assert (svg.get("width"), svg.get("height")) == (f"{width}pt", f"{height}pt")
    assert len(svg.findall(".//{*}image")) == 4
    assert sorted("".join(t.itertext()) for t in svg.iter("{http://www.w3.org/2000/svg}text")) == sorted(TEXTS)
    pdf = (tmp_path / "s.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and re.search(rb"/MediaBox \[ *0 0 %d %d *\]" % (width, height), pdf)
    assert pdf.count(b"/Subtype /Image") == 4 and b"/FontFile2" in pdf and b"/Type3" not in pdf
    # the same picture, the same bytes (no clock, no random ids): a figure under version control stays put
    for suffix in ("svg", "pdf"):
        save_picture(picture, tmp_path / f"again.{suffix}")
        assert (tmp_path / f"again.{suffix}").read_bytes() == (tmp_path / f"s.{suffix}").read_bytes()


def test_vector_text_is_the_text_and_the_page_the_picture_whatever_matplotlibrc_says(tmp_path, monkeypatch):
    """A caption with dollar signs is no TeX (mathtext turned "$5 and $10" into maths, and raised on "$\\foo$"),
    and a user's `savefig.bbox: tight` does not crop the page."""
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "savefig.bbox", "tight")
    picture = sheet([Column([tile(torch.ones(3, 8, 8), 96)], "$5 and $10", captions=["$\\foo$"])])
    save_picture(picture, tmp_path / "s.svg")
    save_picture(picture, tmp_path / "s.pdf")
    svg = ET.parse(tmp_path / "s.svg").getroot()
    assert {"".join(t.itertext()) for t in svg.iter("{http://www.w3.org/2000/svg}text")} == {"$5 and $10", "$\\foo$"}
    assert (svg.get("width"), svg.get("height")) == tuple(f"{side}pt" for side in picture.size)
    assert re.search(rb"/MediaBox \[ *0 0 %d %d *\]" % picture.size, (tmp_path / "s.pdf").read_bytes())


def test_a_map_s_dots_are_one_collection_in_an_svg(tmp_path):
    """5,000 dots of a scatter: a circle defined once and used 5,000 times, not a path written out per dot."""
    from repre.use.embedding_map import draw_scatter

    points = np.random.default_rng(0).random((5000, 2))
    labels = np.random.default_rng(1).integers(0, 10, 5000).tolist()
    draw_scatter(points, labels, {}, tmp_path / "map.svg", ["emb.npy"])
    draw_scatter(points, labels, {}, tmp_path / "map.png", ["emb.npy"])
    svg = (tmp_path / "map.svg").read_text()
    assert svg.count("<use ") == 5000 and (tmp_path / "map.svg").stat().st_size < 1_000_000
    with Image.open(tmp_path / "map.png") as png:
        assert f'width="{png.width}pt"' in svg


def test_a_picture_s_format_is_checked_before_any_work(monkeypatch):
    assert picture_path("a/b.PNG").name == "b.PNG"
    with pytest.raises(UserError, match=r"must end in \.png, \.svg or \.pdf"):
        picture_path("nn.jpg")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    assert picture_path("nn.png").suffix == ".png"
    with pytest.raises(UserError, match=r"PDF pictures need matplotlib: pip install 'repre\[figures\]'"):
        picture_path("nn.pdf")


def test_a_caption_fits_its_tile_and_a_cut_one_says_so():
    """Captions may use the gap after their tile; one still too long ends with ".." (not a shorter word)."""
    pen, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), ImageFont.load_default()
    side = thumb_side(28)
    if isinstance(font, ImageFont.FreeTypeFont):  # Pillow >= 10.1 with FreeType (the wider bitmap font cuts it)
        assert fitted(pen, "0.9931 Ankle boot", font, side + PAD - 3) == "0.9931 Ankle boot"  # a class name
    cut = fitted(pen, "0.9931 " + "a long class name" * 3, font, side + PAD - 3)
    assert cut.endswith("..") and cut.startswith("0.9931 a long") and pen.textlength(cut, font=font) <= side + PAD - 3


def test_a_column_title_leaves_a_gap_before_the_next_column():
    """A title as wide as the column's pitch ran into the next column's ("reconstructionview 2" at 64 px)."""
    pen, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), ImageFont.load_default()
    side = int(pen.textlength("reconstruction", font=font)) - PAD  # the title as wide as the column's pitch
    blank = [tile(torch.ones(3, 8, 8), side)]
    picture = sheet([Column(blank, "reconstruction"), Column(blank, "")])  # the second: no title of its own
    header = torch.from_numpy(np.asarray(picture.raster().convert("L"))[:HEADER].copy())
    inked = (header < 128).any(dim=0).nonzero()
    assert int(inked.max()) < PAD + side + PAD - 2  # the title ends 3 px or more before the next column starts


def test_small_images_are_drawn_near_96_px_by_a_whole_factor():
    assert [thumb_side(s) for s in (16, 28, 48, 64, 70, 224)] == [96, 84, 96, 128, 70, 224]


def test_a_larger_image_is_shrunk_to_its_tile_antialiased():
    """A 224 px image in a 96 px tile kept every few pixels: 1-px stripes (mean grey) came out 0 to 255."""
    stripes = torch.zeros(3, 224, 224)
    stripes[:, :, ::2] = 1
    values = np.asarray(tile(stripes, 96))
    assert values.shape == (96, 96, 3) and 100 < values.min() <= values.max() < 155
    small = np.asarray(tile(torch.eye(8)[None], 96))  # enlarged: each pixel a sharp 12 px block
    assert set(np.unique(small).tolist()) == {0, 255}
