"""The 2-D map of embeddings: t-SNE keeps clusters apart, fixed-seed subsampling, scatter or thumbnails."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from repre.errors import UserError
from repre.use.embedding_map import embedding_map, layout, subsample


def clusters(n: int = 60, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """n unit vectors around 3 random centres, and their cluster ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim))
    labels = [i % 3 for i in range(n)]
    x = centres[labels] + 0.1 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_tsne_keeps_clusters_apart():
    x, labels = clusters()
    points = layout(x, "tsne", seed=0)
    assert points.shape == (60, 2) and points.min() == 0.0 and points.max() == 1.0
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(axis=1)
    assert np.mean([labels[i] == labels[j] for i, j in enumerate(nearest)]) == 1.0


def test_subsampling_is_fixed_by_the_seed_and_reported(tmp_path):
    assert subsample(10, 20, 0).tolist() == list(range(10))
    a, b = subsample(1000, 50, 3), subsample(1000, 50, 3)
    assert (a == b).all() and len(set(a.tolist())) == 50 and (np.diff(a) > 0).all()
    x, labels = clusters(90)
    result = embedding_map(x, labels, tmp_path / "map.png", limit=30, names={0: "zero"})
    assert result["kind"] == "scatter" and result["points"] == 30 and result["subsampled"]
    assert Image.open(tmp_path / "map.png").size[0] > 1000


def test_a_map_of_many_classes_keeps_its_size_and_says_so(tmp_path, repre_log):
    """1,000 classes made a legend many times taller than the map, the note after all of them: the
    legend names what fits and how many more there are."""
    x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    embedding_map(x, [i % 150 for i in range(300)], tmp_path / "map.png", about=["emb.npy"])
    assert Image.open(tmp_path / "map.png").size == (1180, 1000)
    assert "150 classes drawn: so many colours cannot be told apart" in repre_log.text


def test_without_labels_the_map_shows_thumbnails(tmp_path):
    x, _ = clusters(30)
    seen = []

    def thumbnail(row: int) -> Image.Image:
        seen.append(row)
        return Image.new("L", (28, 28), 255)

    result = embedding_map(x, [None] * 30, tmp_path / "map.png", thumbnail=thumbnail, about=["emb.npy"])
    assert result["kind"] == "thumbnails" and sorted(seen) == list(range(30))
    picture = Image.open(tmp_path / "map.png").convert("L")
    caption = picture.crop((0, 1432, picture.width, picture.height))  # under the 1,400 + 32 px of the map
    assert picture.height > 1432 and caption.getextrema()[0] < 64  # what the map is, written under it
    with pytest.raises(UserError, match="--checkpoint"):
        embedding_map(x, [None] * 30, tmp_path / "no.png")
    with pytest.raises(UserError, match="umap|tsne"):
        embedding_map(x, [0] * 30, tmp_path / "no.png", method="mds")
    from repre.use.embedding_map import map_file

    with pytest.raises(UserError, match="must end in .png, .svg or .pdf"):  # before the file or its images are read
        map_file(tmp_path / "none.npy", tmp_path / "map.jpg", thumbnails=True)


def test_repre_map_draws_an_embedding_file_by_label_or_as_thumbnails(tiny_run, tmp_path, capsys):
    """The tiny run's labelled train images: a scatter; a flat folder without labels: thumbnails, the images
    read with the data config of the checkpoint embed read (from its card; exit 2 when that one is gone) or of
    --checkpoint."""
    from conftest import last_json, run_cli, save_png

    run, _ = tiny_run
    labelled = tmp_path / "train.npy"
    assert run_cli(["embed", "--checkpoint", str(run), "--out", str(labelled)])[0] == 0
    code, stdout = run_cli(["map", "--embeddings", str(labelled), "--out", str(tmp_path / "map.png"),
                            "--max-points", "40"])
    result = last_json(stdout)
    assert code == 0 and result["kind"] == "scatter" and result["points"] == 40 and result["subsampled"]
    code, stdout = run_cli(["map", "--embeddings", str(labelled), "--out", str(tmp_path / "seen.png"),
                            "--max-points", "40", "--thumbnails"])
    assert code == 0 and last_json(stdout)["kind"] == "thumbnails"  # labelled images drawn as they look
    rng = np.random.default_rng(0)
    for i in range(12):
        save_png(tmp_path / "flat" / f"{i}.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    flat = tmp_path / "flat.npy"
    folder = ["--set", "data.name=folder", "--set", f"data.root={tmp_path / 'flat'}"]
    assert run_cli(["embed", "--checkpoint", str(run), "--out", str(flat), *folder])[0] == 0
    code, stdout = run_cli(["map", "--embeddings", str(flat), "--out", str(tmp_path / "x.png")])
    assert code == 0 and last_json(stdout)["kind"] == "thumbnails" and (tmp_path / "x.png").is_file()
    code, stdout = run_cli(["map", "--embeddings", str(flat), "--out", str(tmp_path / "thumbs.png"),
                            "--checkpoint", str(run)])
    assert code == 0 and last_json(stdout)["kind"] == "thumbnails" and (tmp_path / "thumbs.png").is_file()
    card = json.loads(flat.with_suffix(".json").read_text())
    flat.with_suffix(".json").write_text(json.dumps({**card, "checkpoint": str(tmp_path / "moved.pt")}))
    code, _ = run_cli(["map", "--embeddings", str(flat), "--out", str(tmp_path / "y.png")])
    assert code == 2 and "moved.pt) is gone: give --checkpoint" in capsys.readouterr().err
