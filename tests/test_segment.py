import numpy as np
import pytest
import torch
from test_data import write_idx

from conftest import last_json, run_cli
from repre.data.scenes import FashionScenes, compose
from repre.eval.segment import miou


def items(n=20):
    rng = np.random.default_rng(0)
    imgs = np.zeros((n, 28, 28), dtype=np.uint8)
    imgs[:, 6:22, 8:20] = rng.integers(60, 255, size=(n, 16, 12))  # an opaque block per item
    return imgs, (np.arange(n) % 10).astype(np.uint8)


@pytest.fixture
def fmnist_root(tmp_path):
    imgs, labels = items()
    write_idx(tmp_path / "fm", imgs, labels, "train")
    write_idx(tmp_path / "fm", imgs[::-1].copy(), labels[::-1].copy(), "t10k")
    return tmp_path / "fm"


def test_scenes_are_deterministic_and_masks_match_the_items():
    imgs, labels = items()
    images, lab = torch.from_numpy(imgs), torch.from_numpy(labels)
    a = compose(images, lab, seed=3, split="train", index=5, size=64)
    b = compose(images, lab, seed=3, split="train", index=5, size=64)
    c = compose(images, lab, seed=3, split="train", index=6, size=64)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    canvas, mask = a
    assert ((mask > 0) == (canvas > 20)).all()  # labelled pixels are exactly the pasted items' pixels
    assert set(mask.unique().tolist()) - {0} <= {int(v) + 1 for v in labels}


def test_miou_on_a_hand_made_confusion():
    conf = torch.tensor([[8, 2, 0], [0, 6, 0], [0, 0, 0]])  # class 2 absent: ignored
    m, acc, per_class = miou(conf)
    assert per_class[0] == pytest.approx(8 / 10) and per_class[1] == pytest.approx(6 / 8) and per_class[2] is None
    assert m == pytest.approx((0.8 + 0.75) / 2) and acc == pytest.approx(14 / 16)


def test_fashion_scenes_source(fmnist_root):
    src = FashionScenes(str(fmnist_root), "train", 5, 64)
    img, label = src.load(2)
    assert img.shape == (3, 64, 64) and label == -1 and src.mask(2).shape == (64, 64)


def test_eval_segment_end_to_end(tiny_run, fmnist_root):
    out, _ = tiny_run
    code, stdout = run_cli(["eval", "segment", "--checkpoint", str(out), "--set", f"data.root={fmnist_root}",
                            "--set", "eval.segment_train=16", "--set", "eval.segment_test=8",
                            "--set", "eval.segment_epochs=2"])
    result = last_json(stdout)
    assert code == 0 and result["task"] == "segment" and 0 <= result["value"] <= 1
    assert 0 <= result["extra"]["pixel_acc"] <= 1 and result["extra"]["feature_grid"] == [16, 16]


def test_pretrain_on_fashion_scenes(tmp_path, fmnist_root):
    from conftest import TINY

    args = ["pretrain", "--out", str(tmp_path / "s")]
    for item in TINY + ["data.name=fashion-scenes", f"data.root={fmnist_root}", "data.scenes_train=32",
                        "data.scenes_test=8", "data.image_size=32"]:
        args += ["--set", item]
    code, stdout = run_cli(args)
    summary = last_json(stdout)
    assert code == 0 and summary["completed"] and summary["knn_top1"] is None  # scenes have no image label
