from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import last_json, run_cli, save_png, tiny_config, write_idx
from repre.core.pictures import sheet_size, thumb_side
from repre.data.folder import UnreadableImage
from repre.data.scenes import FashionScenes, compose
from repre.data.seg_folder import SegmentationFolder, read_mask
from repre.errors import UserError
from repre.eval.segment import confusion, miou


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


def test_eval_segment_end_to_end(tiny_run, fmnist_root, repre_log):
    """The scenes on a run of other images: measured, and said to be the scenes (not the run's images)."""
    out, _ = tiny_run
    code, stdout = run_cli(["eval", "segment", "--checkpoint", str(out), "--set", f"eval.segment.root={fmnist_root}",
                            "--set", "eval.segment.train=16", "--set", "eval.segment.test=8",
                            "--set", "eval.segment.epochs=2"])
    result = last_json(stdout)
    assert code == 0 and result["task"] == "segment" and 0 <= result["value"] <= 1
    assert 0 <= result["extra"]["pixel_acc"] <= 1 and result["extra"]["feature_grid"] == [16, 16]
    assert list(result["extra"]["per_class_iou"]) == result["extra"]["classes"]  # each class's IoU by its name
    said = "measures Fashion-MNIST scenes (eval.segment.data=fashion-scenes), not this run's synthetic"
    assert said in repre_log.text
    with Image.open(result["extra"]["picture"]) as picture:  # 8 test scenes: image, truth, prediction
        assert picture.size[0] == sheet_size(8, 3, thumb_side(64), True, True)[0]
        assert picture.size[1] > sheet_size(8, 3, thumb_side(64), True, True)[1]  # the colours named under it


def test_the_masks_are_drawn_in_the_palettes_colours_and_the_unlabelled_in_white():
    from repre.eval.segment import PALETTE, coloured, segment_picture

    masks = torch.tensor([[[0, 1], [255, 1 + len(PALETTE)]]])
    drawn = coloured(masks, ignore=255)  # [1, 3, 2, 2]
    assert drawn[0, :, 0, 0].tolist() == [0, 0, 0] and drawn[0, :, 0, 1].tolist() == list(PALETTE[1][1])
    assert drawn[0, :, 1, 0].tolist() == [255, 255, 255] and drawn[0, :, 1, 1].tolist() == list(PALETTE[1][1])
    images = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    picture = segment_picture(images, masks, torch.tensor([[[0, 1], [0, 0]]]), 255, ["background", "coat"], 2)
    assert picture.size[0] == sheet_size(1, 3, thumb_side(2), True, True)[0]
    from repre.eval.segment import legend

    assert legend([0, 1], ["background", "coat"], 2) == "background black, coat red"  # the classes drawn
    assert legend([3, 21], None, 150) == "3 yellow, 21 yellow (the 18 colours repeat past class 17)"


def test_the_scenes_read_fashion_mnist_where_the_run_says_or_at_its_default_location():
    """A run on a folder has its images in data.root, not Fashion-MNIST's files: the scenes' items come from
    eval.segment.root, else the data.root of a run on Fashion-MNIST, else the default location."""
    from repre.eval.segment import scene_root

    assert scene_root(tiny_config("data.name=folder", "data.root=/photos")) is None
    assert scene_root(tiny_config("data.name=fashion-mnist", "data.root=/fm")) == "/fm"
    assert scene_root(tiny_config("data.name=folder", "data.root=/photos", "eval.segment.root=/fm")) == "/fm"


def test_a_run_pre_trained_on_scenes_is_refused_and_its_scene_size_stays_the_probes():
    """Pre-training on fashion-scenes is gone: such a run's config is refused; another run's scene keys go, a
    canvas other than 64 px kept as the dense probe's size, which the probe read from it."""
    from repre.config.loading import config_from_dict

    old = tiny_config().to_dict()
    old["data"] |= {"scenes_train": 10000, "scenes_test": 2000, "scene_size": 48}
    assert config_from_dict(old).eval.segment.size == 48
    old["data"]["scene_size"] = 64
    assert config_from_dict(old) == tiny_config()
    old["data"]["name"] = "fashion-scenes"
    with pytest.raises(UserError, match="pre-trained on fashion-scenes"):
        config_from_dict(old)


def seg_folder(root: Path, n_train: int = 10, n_val: int = 4, size: tuple[int, int] = (20, 24)) -> Path:
    """images/{train,val}/i.jpg with masks/{train,val}/i.png: a bright square (class 2) on a dark background
    (class 1), a 255 (ignore) border row; train image 0 has no mask."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            img = np.full((*size, 3), 30, dtype=np.uint8)
            mask = np.ones(size, dtype=np.uint8)
            top, left = (int(v) for v in rng.integers(0, 8, size=2))
            img[top:top + 10, left:left + 10] = 220
            mask[top:top + 10, left:left + 10] = 2
            mask[0] = 255
            save_png(root / "images" / split / f"{i}.jpg", img)
            if not (split == "train" and i == 0):
                save_png(root / "masks" / split / f"{i}.png", mask)
    return root


def test_segmentation_folder_pairs_sizes_and_classes(tmp_path, caplog):
    """Pairs by name; macOS's ._ files (AppleDouble metadata) are no images or masks, as in image folders (they
    were "unreadable pairs")."""
    root = seg_folder(tmp_path / "seg")
    for where in ("images/train/._1.jpg", "masks/train/._1.png"):
        (root / where).write_bytes(b"\0\5\26\7")
    with caplog.at_level("WARNING", logger="repre"):
        train = SegmentationFolder(root, "train", size=16)
    assert "1 of 10 train images have no mask" in caplog.text  # 0.jpg is left out, with a warning
    assert "unreadable" not in caplog.text
    assert train.images.shape == (9, 3, 16, 16) and train.images.dtype == torch.uint8
    assert train.masks.shape == (9, 16, 16) and set(train.masks.unique().tolist()) <= {1, 2, 255}


def test_segmentation_folder_errors_name_the_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="images/"):
        SegmentationFolder(tmp_path / "empty", "train", size=16)
    with pytest.raises(UserError, match="is no folder"):
        SegmentationFolder(tmp_path / "nowhere", "train", size=16)
    root = seg_folder(tmp_path / "seg")
    for split in ("images", "masks"):
        (root / split / "val").rename(root / split / "held")
    with pytest.raises(UserError, match="no val split .* --set eval.split=val tests on a part of the train pairs"):
        SegmentationFolder(root, "val", size=16)


def test_masks_are_read_as_class_indices_in_every_mode_that_holds_them(tmp_path):
    """1-bit PNGs (0 and 1), grayscale saved as RGB (equal channels) read; a colour mask is refused saying what
    to do (it was "must be a grayscale or palette PNG" for the 1-bit ones too)."""
    ids = np.array([[0, 1, 1], [1, 0, 1]], dtype=np.uint8)
    Image.fromarray(ids.astype(bool)).convert("1").save(tmp_path / "bits.png")
    Image.fromarray(np.repeat(ids[..., None] * 7, 3, axis=2)).save(tmp_path / "grey-rgb.png")
    palette = Image.fromarray(ids * 5, mode="L").convert("P")
    palette.putpalette([255, 0, 0] * 256)  # every index the same colour: the indices are read, not colours
    palette.save(tmp_path / "palette.png")
    assert read_mask(tmp_path / "bits.png").tolist() == ids.tolist()
    assert read_mask(tmp_path / "grey-rgb.png").tolist() == (ids * 7).tolist()
    assert read_mask(tmp_path / "palette.png").tolist() == (ids * 5).tolist()
    colour = np.zeros((2, 3, 3), dtype=np.uint8)
    colour[0, 0] = (128, 0, 0)  # VOC's aeroplane
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(UnreadableImage, match="RGB colour mask; .* map each colour to its class"):
        read_mask(tmp_path / "colour.png")


def test_unreadable_pairs_are_said_once_with_why_and_none_readable_names_the_first(tmp_path, caplog):
    root = seg_folder(tmp_path / "seg", n_train=5)
    for i in (1, 2):  # masks of half their image's size
        save_png(root / "masks" / "train" / f"{i}.png", np.ones((10, 12), dtype=np.uint8))
    with caplog.at_level("WARNING", logger="repre"):
        train = SegmentationFolder(root, "train", size=16)
    assert len(train) == 2
    said = [r.getMessage() for r in caplog.records if "left out as unreadable" in r.getMessage()]
    assert len(said) == 1 and "2 of the 4 train image/mask pairs" in said[0] and "differ in size" in said[0]
    for i in (3, 4):
        save_png(root / "masks" / "train" / f"{i}.png", np.ones((10, 12), dtype=np.uint8))
    with pytest.raises(UserError, match=r"no readable image/mask pair among the 4 .* e\.g\. 1\.jpg: .* differ in size"):
        SegmentationFolder(root, "train", size=16)


def test_masks_that_would_score_a_meaningless_number_are_refused():
    """Binary masks saved 0/255 under the default ignore 255 left one class and scored mIoU 1.0; test masks all
    ignored scored 0.0; instance ids counted tens of thousands of classes (a confusion matrix of gigabytes)."""
    from repre.eval.segment import mask_classes

    binary = torch.tensor([[[0, 255], [255, 0]]])
    with pytest.raises(UserError, match="only label 0 outside eval.segment.ignore=255.* saved 0/255"):
        mask_classes(binary, binary, 0, ignore=255)
    train = torch.tensor([[[0, 1], [1, 0]]])
    with pytest.raises(UserError, match="no probe-test pixel has a label"):
        mask_classes(train, torch.full((1, 2, 2), 255), 0, ignore=255)
    instances = torch.tensor([[[0, 26001], [26002, 0]]])
    with pytest.raises(UserError, match="labels up to 26002 .* map them to 0, 1"):
        mask_classes(instances, instances, 0, ignore=255)
    assert mask_classes(instances, instances, 26003, ignore=255) == 26003  # given: trusted


def test_a_folder_s_val_split_decodes_only_the_pairs_the_probe_reads(tmp_path, monkeypatch):
    from repre.data import seg_folder as module
    from repre.eval.segment import folder_data

    root = seg_folder(tmp_path / "seg", n_train=30)
    decoded = []
    decode = module.decode
    monkeypatch.setattr(module, "decode", lambda path: decoded.append(path) or decode(path))
    cfg = tiny_config("eval.segment.data=folder", f"eval.segment.root={root}", "eval.segment.size=16",
                      "eval.split=val", "eval.segment.train=4", "eval.segment.test=2")
    data = folder_data(cfg)
    assert len(data.train_images) == 4 and len(data.test_images) == 2 and len(decoded) == 6


def test_confusion_skips_ignored_pixels():
    probe = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        probe.weight.copy_(torch.tensor([[[[-1.0]]], [[[1.0]]]]))
        probe.bias.zero_()
    feats = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]]]])  # predicts class 1, 0 / 1, 0
    masks = torch.tensor([[[1, 0], [255, 1]]])  # the 255 pixel is not counted
    conf = confusion(probe, feats, masks, classes=2, ignore=255)
    assert conf.tolist() == [[1, 0], [1, 1]]  # rows truth, columns prediction


def test_eval_segment_on_a_folder_end_to_end(tiny_run, tmp_path):
    out, _ = tiny_run
    root = seg_folder(tmp_path / "seg")
    code, stdout = run_cli(["eval", "segment", "--checkpoint", str(out), "--set", "eval.segment.data=folder",
                            "--set", f"eval.segment.root={root}", "--set", "eval.segment.size=16",
                            "--set", "eval.segment.epochs=2"])
    result = last_json(stdout)
    assert code == 0 and result["extra"]["data"] == "folder" and result["extra"]["classes"] is None  # no names
    assert list(result["extra"]["per_class_iou"]) == ["0", "1", "2"]
    assert result["extra"]["train_images"] == 9 and result["extra"]["test_images"] == 4
    assert 0 <= result["value"] <= 1 and result["extra"]["feature_grid"] == [4, 4]
    code, _ = run_cli(["eval", "segment", "--checkpoint", str(out), "--set", "eval.segment.data=folder",
                       "--set", f"eval.segment.root={root}", "--set", "eval.segment.size=18"])
    assert code == 2  # a 4-px patch grid covers 16 of its 18 px: refused


def test_the_probe_s_classes_come_from_both_splits_and_a_label_beyond_a_given_count_is_refused():
    """Counted from the masks: the highest label of either split + 1 (a class only in the test masks has an
    output); given: a label at or above it exits 2 naming the counts to set, not cross-entropy's index error."""
    from repre.eval.segment import mask_classes

    train, test = torch.tensor([[[0, 1], [255, 1]]]), torch.tensor([[[0, 4], [1, 255]]])
    assert mask_classes(train, test, 0, ignore=255) == 5
    assert mask_classes(train, test, 6, ignore=255) == 6
    with pytest.raises(UserError, match=r"label 4, but eval.segment.classes=3 .* eval.segment.classes=5"):
        mask_classes(train, test, 3, ignore=255)


def test_a_folder_s_class_found_only_in_its_val_masks_has_an_output(tmp_path):
    from repre.eval.segment import folder_data

    root = seg_folder(tmp_path / "seg")  # classes 1 and 2 (255 ignored)
    save_png(root / "masks" / "val" / "0.png", np.full((20, 24), 3, dtype=np.uint8))  # class 3: val alone
    cfg = tiny_config("eval.segment.data=folder", f"eval.segment.root={root}", "eval.segment.size=16")
    assert folder_data(cfg).classes == 4


def test_eval_segment_folder_without_root_is_a_clear_error(tiny_run):
    out, _ = tiny_run
    code, stdout = run_cli(["eval", "segment", "--checkpoint", str(out), "--set", "eval.segment.data=folder"])
    assert code == 2


@pytest.mark.parametrize("init", ["timm", "mocov3", "dino"])
def test_the_dense_probe_resizes_a_copy_and_recomputes_a_fixed_sincos_embedding(init):
    """At another input size a learned position embedding is interpolated (timm's way, or DINO's for
    model.init=dino); MoCo v3's fixed sin-cos one is computed for the new grid and stays frozen. The caller's
    encoder is unchanged."""
    from timm.layers import resample_abs_pos_embed

    from repre.models.backbone import Backbone
    from repre.models.dino_vit import dino_resample
    from repre.models.mocov3_vit import sincos_2d

    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
    encoder = Backbone("vit_tiny_patch16_224", kwargs, init=init)
    before = encoder.model.pos_embed.detach().clone()
    resized = encoder.at_size((24, 24))
    assert torch.equal(encoder.model.pos_embed, before) and resized.model.pos_embed.shape == (1, 37, 32)
    fixed = torch.equal(resized.model.pos_embed.detach(), sincos_2d((6, 6), 32))
    assert fixed == (init == "mocov3") and resized.model.pos_embed.requires_grad == (init != "mocov3")
    if init != "mocov3":
        expected = (dino_resample(before, (6, 6), (4, 4)) if init == "dino" else
                    resample_abs_pos_embed(before, (6, 6), (4, 4), num_prefix_tokens=1))
        assert torch.allclose(resized.model.pos_embed.detach(), expected, atol=1e-6)
        assert not torch.allclose(dino_resample(before, (6, 6), (4, 4)),
                                  resample_abs_pos_embed(before, (6, 6), (4, 4), num_prefix_tokens=1), atol=1e-3)
    assert resized(torch.randn(2, 3, 24, 24))[0].shape == (2, 32)


def test_the_dense_probe_keeps_a_swin_s_windows_or_refuses_a_size_that_shrinks_one():
    """timm's set_input_size scales a Swin's windows with its grid (window 4 trained at 32 px became 8 at the
    probe's 64, every position table resampled, silently): the probe's copy keeps the trained windows and
    tables; a size where a stage has fewer cells than its window is refused before the data are made."""
    from repre.eval.segment import check_size
    from repre.models.backbone import Backbone

    encoder = Backbone("swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 2, "window_size": 4,
                                                        "embed_dim": 16, "depths": (1, 1, 1), "num_heads": (1, 2, 4)})
    resized = encoder.at_size((64, 64))
    assert resized.windows() == encoder.windows() == [(4, 4)] * 3
    state, trained = resized.state_dict(), encoder.state_dict()
    assert all(torch.equal(state[k], trained[k]) for k in trained if "relative_position_bias_table" in k)
    assert resized(torch.randn(1, 3, 64, 64), [2])[1][0].shape == (1, 64, 8, 8)
    with pytest.raises(UserError, match=r"eval.segment.size=16: at 16x16 px a stage of this Swin has fewer cells "
                                        r"than its window .* evaluate it at 32 px or more"):
        check_size(encoder, tiny_config("eval.segment.size=16"))


def test_the_probe_learns_a_separable_map():
    """Features one-hot of the mask (plus noise): a trained 1x1 probe labels nearly every pixel right."""
    from torch import nn

    from repre.eval.segment import train_probe

    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (32, 8, 8), generator=g)
    feats = nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float() * 4 + 0.1 * torch.randn(32, 3, 8, 8,
                                                                                                generator=g)
    probe = train_probe(feats, masks, 3, lr=0.1, epochs=30)
    value, accuracy, _ = miou(confusion(probe, feats, masks, 3, 255))
    assert value > 0.95 and accuracy > 0.97


def test_the_probe_trains_on_labelled_pixels_alone():
    """eval.segment.ignore (ADE20K's 0: unlabelled) is no target in training: with most pixels unlabelled, the
    probe still labels every pixel by its features (trained on them as class 0, it would answer 0)."""
    from torch import nn

    from repre.eval.segment import train_probe

    g = torch.Generator().manual_seed(0)
    truth = torch.randint(1, 3, (32, 8, 8), generator=g)
    feats = nn.functional.one_hot(truth, 3).permute(0, 3, 1, 2).float() * 4 + 0.1 * torch.randn(32, 3, 8, 8,
                                                                                                generator=g)
    masks = torch.where(torch.rand(32, 8, 8, generator=g) < 0.8, 0, truth)  # 80% unlabelled
    probe = train_probe(feats, masks, 3, lr=0.1, epochs=30, ignore=0)
    with torch.no_grad():
        answer = probe(feats).argmax(dim=1)
    assert (answer == truth).float().mean() > 0.95


def test_a_picture_that_cannot_be_written_leaves_the_result(tmp_path, repre_log):
    """An evaluation's picture on a full disk (or a folder it may not write): warned of, the result without it."""
    from repre.core.pictures import Picture, save_result_picture

    extra = {}
    save_result_picture(Picture((2, 2)), tmp_path / "segment.png", extra)
    assert extra == {"picture": str(tmp_path / "segment.png")}
    (tmp_path / "afile").write_text("")
    extra = {}
    save_result_picture(Picture((2, 2)), tmp_path / "afile" / "segment.png", extra)
    assert extra == {} and "was not written" in repre_log.text


def test_the_probe_size_is_checked_against_the_maps_stride_when_left_to_its_default():
    """A patch-7 ViT on the 64 px scenes: a map of 9 x 9 tokens covered 63 px and was stretched over 64 (mIoU
    reported); only an eval.segment.size given was checked."""
    from repre.eval.segment import check_size
    from repre.models.backbone import Backbone

    vit = Backbone("vit_tiny_patch16_224", {"img_size": 63, "patch_size": 7, "embed_dim": 16, "depth": 1,
                                            "num_heads": 1})
    with pytest.raises(UserError, match=r"eval.segment.size=64 \(its default\) is not a multiple of 7, the stride "
                                        r"of the maps the dense probe reads: --set eval.segment.size=63 \(or 70\)"):
        check_size(vit, tiny_config())
    with pytest.raises(UserError, match=r"eval.segment.size=16 \(its default\)"):  # a folder: data.image_size
        check_size(vit, tiny_config("eval.segment.data=folder", "eval.segment.root=x"))
    check_size(vit, tiny_config("eval.segment.size=63"))


def test_an_ignore_label_among_the_classes_is_neither_predicted_nor_scored():
    """ADE20K's raw masks mark unlabelled pixels 0: with eval.segment.ignore=0 the probe still predicted class 0,
    scored it (IoU 0, in the mean) and drew it white."""
    from repre.eval.segment import predicted

    probe = torch.nn.Conv2d(2, 3, 1)
    with torch.no_grad():
        probe.weight.zero_()
        probe.bias.copy_(torch.tensor([5.0, 1.0, 0.0]))  # class 0 would win everywhere
    feats = torch.randn(2, 2, 4, 4)
    assert set(predicted(probe, feats, (8, 8), ignore=0).unique().tolist()) == {1}
    masks = torch.ones(2, 8, 8, dtype=torch.long)
    masks[:, :4] = 0  # unlabelled
    conf = confusion(probe, feats, masks, 3, ignore=0)
    m, acc, per_class = miou(conf)
    assert per_class == [None, 1.0, None] and m == 1.0 and acc == 1.0


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("shape", [(30, 40), (32, 32)])
def test_a_mask_turns_with_its_images_exif_orientation(tmp_path, orientation, shape):
    """A camera JPEG stored sideways with an EXIF orientation is read upright; its mask, of the stored pixels'
    size, labels the stored pixels and is turned with them (it was read as stored: a square pair misaligned
    silently, another refused as two sizes). A mask already of the upright size is taken as it is."""
    from repre.data.seg_folder import read_pair

    h, w = shape
    stored = np.zeros((h, w, 3), np.uint8)
    stored[:, : w // 2] = 255  # the left half of the stored pixels is white, labelled 1
    labels = np.zeros((h, w), np.uint8)
    labels[:, : w // 2] = 1
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "a.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(labels).save(tmp_path / "a.png")
    image, mask = read_pair(tmp_path / "a.jpg", tmp_path / "a.png")
    assert image.shape[-2:] == mask.shape
    white = image.float().mean(0) > 128
    assert torch.equal(white, mask == 1)
    upright = np.array(Image.fromarray(labels).transpose(
        {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}[orientation]))
    if upright.shape != labels.shape:  # a mask drawn on the upright image: as it is
        Image.fromarray(upright).save(tmp_path / "a.png")
        image, mask = read_pair(tmp_path / "a.jpg", tmp_path / "a.png")
        assert torch.equal(image.float().mean(0) > 128, mask == 1)
