
import errno
import gzip
import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import LOCAL_AUG, save_png, tiny_config, write_idx
from repre.config import AugConfig
from repre.data.fashion_mnist import FashionMNIST
from repre.data.folder import ImageFolder, UnreadableImage, decode
from repre.data.pipeline import Stages, ViewCollate, ViewDataset, finish_views, pretrain_loader, view_spec
from repre.data.sampler import EpochBatchSampler
from repre.data.sources import build_source, load_or_replace
from repre.data.splits import eval_source, select, subset_of, train_source, val_split
from repre.data.views import ViewSpec, gaussian_blur, make_views, photometric
from repre.data.workers import resolve_workers
from repre.errors import UserError


def test_fashion_mnist_reads_idx_files(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, size=(5, 28, 28), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    write_idx(tmp_path, imgs, labels, "train")
    source = FashionMNIST(str(tmp_path), "train")
    img, label = source.load(3)
    assert len(source) == 5 and label == 3 and img.shape == (3, 28, 28)
    assert torch.equal(img[1], torch.from_numpy(imgs[3]))
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):  # uncompressed, as torchvision's raw/
        (tmp_path / "raw").mkdir(exist_ok=True)
        (tmp_path / "raw" / name).write_bytes(gzip.decompress((tmp_path / f"{name}.gz").read_bytes()))
    assert torch.equal(FashionMNIST(str(tmp_path / "raw"), "train").load(3)[0], img)


def test_missing_fashion_mnist_says_what_to_do(tmp_path):
    with pytest.raises(UserError) as err:
        FashionMNIST(str(tmp_path / "none"), "train")
    msg = str(err.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert "train-images-idx3-ubyte.gz" in msg and "data.root" in msg


def test_image_modes_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = save_png(tmp_path / "g.png", rng.integers(0, 255, (9, 7), dtype=np.uint8))
    rgba = save_png(tmp_path / "a.png", rng.integers(0, 255, (9, 7, 4), dtype=np.uint8))
    deep = tmp_path / "d.png"
    Image.fromarray(rng.integers(0, 65535, (9, 7), dtype=np.uint16)).save(deep)
    pal = tmp_path / "p.png"
    Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).convert("P").save(pal)
    cmyk = tmp_path / "c.jpg"
    Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).convert("CMYK").save(cmyk)
    for path in (gray, rgba, deep, pal, cmyk):
        img = decode(path)
        assert img.shape == (3, 9, 7) and img.dtype == torch.uint8, path


def test_grey_images_of_more_than_8_bits_keep_their_brightness_in_any_format(tmp_path):
    """16-bit values read 0..65535 -> 0..255 whether PIL opens the file as I;16 (PNG, TIFF) or I (a 16-bit PGM):
    a dark image stays dark (not stretched to its own maximum), as an array of the same values
    (`python_source.to_uint8`); floats read from [0, 1]."""
    from repre.data.python_source import as_image

    dark = (np.arange(63, dtype=np.uint16).reshape(7, 9) * 100)  # up to 6,200 of 65,535: 24 of 255
    expected = as_image(dark, "dark")
    for suffix in (".png", ".tif", ".pgm"):
        Image.fromarray(dark).save(tmp_path / f"dark{suffix}")
        assert torch.equal(decode(tmp_path / f"dark{suffix}"), expected), suffix
    assert int(expected.max()) == 24
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "half.tif")
    assert decode(tmp_path / "half.tif").unique().tolist() == [128]
    eight = Image.fromarray(np.full((4, 4), 200, dtype=np.uint8)).convert("I")  # made in code: 8-bit values
    assert as_image(eight, "eight").unique().tolist() == as_image(np.asarray(eight), "array").unique().tolist() == [200]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    img.save(tmp_path / "r.jpg", exif=exif)
    assert decode(tmp_path / "r.jpg").shape == (3, 20, 10)


def test_a_folder_gives_back_its_files_names_as_on_disk_in_order(tmp_path):
    """The index holds the names in arrays, not a str or Path a file (data workers share arrays' pages; see
    `PackedStrings`): names come back as the disk has them, not-UTF-8 bytes and non-ASCII ones included, in
    sorted order, each with its class folder's label."""
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    names = ["cat/a.png", "cat/\u00e9t\u00e9.png", "dog/b.PNG", os.fsdecode(b"dog/\xff.png")]
    for name in names:
        save_png(tmp_path / name, pixels)
    folder = ImageFolder(tmp_path)
    assert [os.path.relpath(folder.path(i), tmp_path) for i in range(len(folder))] == names
    assert folder.labels.tolist() == [0, 0, 1, 1] and folder.classes == ["cat", "dog"]
    assert folder.load(3)[0].shape == (3, 4, 4) and folder.names[-1] == names[-1]
    with pytest.raises(IndexError):
        folder.names[4]


def test_corrupt_image_is_replaced_and_counted(image_folder):
    bad = image_folder / "train" / "cat" / "0.png"
    bad.write_bytes(b"not an image")
    source = ImageFolder(image_folder / "train")
    index = [source.path(i) for i in range(len(source))].index(str(bad))
    img, label, skipped = load_or_replace(source, index)
    assert skipped == 1 and img.shape[0] == 3
    assert sum(torch.equal(img, source.load(i)[0]) for i in range(len(source)) if i != index) == 1


def test_a_run_of_unreadable_files_is_replaced_by_images_drawn_apart_then_refused(tmp_path, repre_log, monkeypatch):
    """Replaced by the next index, a block of unreadable files (a failed copy) became the one image after it,
    each read after scanning the block; a folder of mostly broken files named every one of them."""
    from repre.data import folder as folder_module
    from repre.data.sources import REPLACEMENT_TRIES

    rng = np.random.default_rng(0)
    for i in range(30):
        (tmp_path / "a" / f"a{i:03d}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "a" / f"a{i:03d}.png").write_bytes(b"version https://git-lfs.github.com/spec/v1")
    for i in range(30):
        save_png(tmp_path / "a" / f"z{i:03d}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    source = ImageFolder(tmp_path / "a")
    replaced = [load_or_replace(source, i) for i in range(30)]
    readable = [source.load(i)[0] for i in range(30, 60)]
    chosen = {next(j for j, r in enumerate(readable) if torch.equal(img, r)) for img, _, _ in replaced}
    assert len(chosen) > 10  # spread over the readable ones (the next index: all the first of them)
    assert all(torch.equal(load_or_replace(source, i)[0], replaced[i][0]) for i in range(30))  # fixed by the index
    named = [m for m in repre_log.messages if "skipping unreadable image" in m]
    assert len(named) == folder_module.NAMED_FILES
    assert sum("this process names no more of them" in m for m in repre_log.messages) == 1

    for i in range(30, 60):  # now 1 readable in 60: image 0 and 100 drawn in its place are all unreadable
        if i != 59:
            (tmp_path / "a" / f"z{i - 30:03d}.png").write_bytes(b"")
    with pytest.raises(UserError, match=f"image 0 and {REPLACEMENT_TRIES} others drawn to replace it could not be"):
        big = ImageFolder(tmp_path / "a")
        big.__class__ = type("Many", (ImageFolder,), {"__len__": lambda self: 1_000})  # as if 1,000 files
        big.load = lambda i: source.load(i % 60)
        load_or_replace(big, 0)
    with pytest.raises(UserError, match="none of the 60 images of the dataset could be read"):
        (tmp_path / "a" / "z029.png").write_bytes(b"")
        load_or_replace(ImageFolder(tmp_path / "a"), 0)


def test_an_image_whose_exif_cannot_be_read_is_taken_unturned(tmp_path, repre_log):
    """A broken EXIF block (an IFD without its TIFF header) made the whole image unreadable."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png", exif=b"Exif\x00\x00\x00\x08\x00\x02\x01\x12\x00\x03")
    img, _ = ImageFolder(tmp_path).load(0)
    assert torch.equal(img, torch.from_numpy(pixels).permute(2, 0, 1))
    assert any("x.png: its EXIF cannot be read" in m for m in repre_log.messages)


def test_corrupt_image_does_not_stop_a_run(image_folder, tmp_path):
    from conftest import last_json, run_cli

    (image_folder / "train" / "cat" / "1.png").write_bytes(b"")
    whole = (image_folder / "train" / "dog" / "3.png").read_bytes()
    (image_folder / "train" / "dog" / "2.png").write_bytes(whole[:40])
    args = ["pretrain", "--out", str(tmp_path / "run")]
    for item in ["data.name=folder", f"data.root={image_folder}", "data.image_size=16", "train.batch_size=8",
                 "train.max_steps=3", "model.kwargs={patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2}",
                 "model.arch=vit_tiny_patch16_224", "method.mocov3.mlp_dim=32", "train.precision=fp32",
                 "train.num_workers=0", "train.progress=false", "recon.width=16", "recon.taps=2"]:
        args += ["--set", item]
    code, out = run_cli(args)
    summary = last_json(out)
    assert code == 0 and summary["completed"]
    assert summary["skipped_images"] == 2  # the two bad files, each read once in the 3 steps
    assert summary["knn_top1"] is not None  # train/ and val/ class folders


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        ImageFolder(tmp_path / "empty")


def test_fewer_images_than_a_batch():
    with pytest.raises(UserError, match="fewer than one batch"):
        EpochBatchSampler(10, 16, seed=0)


def spec(size=16) -> ViewSpec:
    return ViewSpec(AugConfig(), size, (0.5,) * 3, (0.25,) * 3)


def test_views_are_a_function_of_seed_epoch_index_view():
    img = torch.randint(0, 255, (3, 20, 24), dtype=torch.uint8)
    a = make_views(img, spec(), seed=1, epoch=2, index=3)
    b = make_views(img, spec(), seed=1, epoch=2, index=3)
    c = make_views(img, spec(), seed=1, epoch=3, index=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (2, 3, 16, 16)
    assert not torch.equal(a[0][0], a[0][1])  # two different views


def test_photometric_stage_is_finite_and_normalized():
    views = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    photo = torch.tensor([[1, 1.3, 0.7, 1.2, 0.05, 1, 1.0, 1]] * 3 + [[0, 1, 1, 1, 0, 0, 0, 0]] * 3)
    out = photometric(views, photo, spec())
    assert out.shape == (6, 3, 16, 16) and torch.isfinite(out).all()
    identity = (views[3:].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(out[3:], identity)  # every operation off: only normalization


def test_blur_with_sigma_zero_is_identity_and_blurs_otherwise():
    x = torch.rand(2, 3, 16, 16)
    y = gaussian_blur(x, torch.tensor([0.0, 1.5]), 7)
    torch.testing.assert_close(y[0], x[0])
    assert y[1].std() < x[1].std()


def test_each_epoch_draws_another_order_of_every_image():
    it = iter(EpochBatchSampler(40, 8, seed=3))
    epochs = [[pair for _ in range(5) for pair in next(it)] for _ in range(2)]  # (epoch, image) pairs
    assert [{e for e, _ in pairs} for pairs in epochs] == [{0}, {1}]
    orders = [[i for _, i in pairs] for pairs in epochs]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(40)) and orders[0] != orders[1]


def test_sampler_resumes_inside_an_epoch():
    full = EpochBatchSampler(40, 8, seed=3)
    it = iter(full)
    batches = [next(it) for _ in range(12)]  # 5 per epoch: crosses two epoch boundaries
    resumed = iter(EpochBatchSampler(40, 8, seed=3, start_step=7))
    assert [next(resumed) for _ in range(5)] == batches[7:12]
    assert batches[5][0][0] == 1  # second epoch


def test_same_batches_with_0_and_2_workers():
    cfg0 = tiny_config("train.num_workers=0")
    cfg2 = tiny_config("train.num_workers=2")
    source = train_source(cfg0)
    a, b = iter(pretrain_loader(cfg0, source, 0, False)), iter(pretrain_loader(cfg2, source, 0, False))
    for _ in range(3):
        x, y = next(a), next(b)
        assert torch.equal(x["index"], y["index"])
        assert torch.equal(x["views"], y["views"])


@pytest.mark.parametrize("data", ["folder", "streamed-shards"])
def test_workers_started_by_spawn_give_the_batches_of_the_main_process(image_folder, tmp_path, data):
    """Data workers start by spawn on macOS and Windows, by forkserver on Linux from Python 3.14: each receives
    its dataset pickled (a folder's index, a stream's shard list) and imports repre anew. Their batches must be
    those the main process makes, as forked workers' are (above)."""
    import multiprocessing

    from conftest import write_shards

    where = (["data.name=folder", f"data.root={image_folder}"] if data == "folder" else
             ["data.name=shards", f"data.root={tmp_path / 'shards'}", "data.shard_access=stream"])
    if data == "streamed-shards":
        write_shards(tmp_path / "shards", 2, 12)
    own, spawned = tiny_config(*where, "train.batch_size=8"), tiny_config(*where, "train.batch_size=8",
                                                                           "train.num_workers=1")
    method = multiprocessing.get_start_method()
    multiprocessing.set_start_method("spawn", force=True)
    try:
        source = train_source(own)
        a, b = iter(pretrain_loader(own, source, 0, False)), iter(pretrain_loader(spawned, source, 0, False))
        for _ in range(2):
            x, y = next(a), next(b)
            assert torch.equal(x["views"], y["views"]) and torch.equal(x["label"], y["label"])
    finally:
        multiprocessing.set_start_method(method, force=True)


@pytest.mark.parametrize("cores, processes, workers", [(2, None, 1), (64, None, 8), (64, "8", 7), (32, "8", 3),
                                                       (2, "2", 0)])
def test_automatic_workers_share_the_cores_among_torchruns_processes(monkeypatch, cores, processes, workers):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    if processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    assert resolve_workers(-1) == workers
    assert resolve_workers(3) == 3


def test_more_workers_than_the_cores_can_hold_are_refused_and_many_said(monkeypatch, repre_log):
    """train.num_workers=1000 on 2 cores hung the run until the memory ran out: refused, saying what to set; 9
    (more than 4 a core) runs, said once."""
    from repre.data.workers import _warn_many_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    _warn_many_workers.cache_clear()  # said once a process: whatever ran before
    assert resolve_workers(8) == 8 and "num_workers" not in repre_log.text
    assert resolve_workers(9) == resolve_workers(9) == 9
    assert repre_log.text.count("train.num_workers=9 on 2 core(s): more workers than") == 1
    with pytest.raises(UserError, match=r"train.num_workers=1000 on 2 core\(s\): .* train.num_workers=-1 chooses 1"):
        resolve_workers(1000)


def test_sampler_shares_of_the_global_batch_make_up_the_single_process_batch():
    whole = iter(EpochBatchSampler(40, 8, seed=3, start_step=3))
    shares = [iter(EpochBatchSampler(40, 8, seed=3, start_step=3, rank=r, world=4)) for r in range(4)]
    for _ in range(6):  # across an epoch boundary
        assert sum((next(s) for s in shares), []) == next(whole)


@pytest.mark.parametrize("local_crops", [0, 2])
def test_photometric_stage_on_the_device_equals_the_workers(local_crops):
    """data.device_stages=photometric: uint8 views and their parameters leave the loader, finish_views completes
    them where the model runs, with the same result (here on the CPU: bitwise)."""
    dino = ["method.name=dino", "method.dino.out_dim=16", *LOCAL_AUG] if local_crops else []
    cfg = tiny_config(*dino, f"data.local_crops={local_crops}", "data.local_size=8")
    source = train_source(cfg)
    workers = next(iter(pretrain_loader(cfg, source, 0, False)))
    raw = next(iter(pretrain_loader(cfg, source, 0, False, Stages.of(cfg, torch.device("cuda")))))
    assert raw["views"].dtype == torch.uint8 and raw["photo"].shape == (*raw["views"].shape[:2], 8)
    done = finish_views(raw, view_spec(cfg, source))
    for key in ["views"] + ["local_views"] * bool(local_crops):
        assert torch.equal(done[key], workers[key]), key
    assert finish_views(workers, view_spec(cfg, source)) is workers  # finished views pass unchanged
    assert Stages.of(cfg, torch.device("cuda")).photometric_on_device  # auto: on a GPU
    assert not Stages.of(cfg, torch.device("cpu")).photometric_on_device


def test_collate_shapes():
    cfg = tiny_config()
    source = train_source(cfg)
    ds = ViewDataset(source, ViewSpec(cfg.aug, 16, source.mean, source.std), 0)
    batch = ViewCollate(ds.spec)([ds[(0, i)] for i in range(4)])
    assert batch["views"].shape == (4, 2, 3, 16, 16) and batch["views"].dtype == torch.float32
    assert batch["label"].tolist() == [source.load(i)[1] for i in range(4)]


def test_bad_files_of_every_kind_are_unreadable_never_a_crash(tmp_path):
    """Truncated JPEG and PNG, zero bytes, text with an image name: each raises UnreadableImage (replaced and
    counted by the loader); WebP and TIFF decode."""
    from repre.data.folder import UnreadableImage

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    jpg, png = tmp_path / "a.jpg", save_png(tmp_path / "a.png", arr)
    Image.fromarray(arr).save(jpg, quality=90)
    bad = {
        "cut.jpg": jpg.read_bytes()[: len(jpg.read_bytes()) // 2],
        "cut.png": png.read_bytes()[: len(png.read_bytes()) // 2],
        "empty.png": b"",
        "notes.jpg": b"these are not pixels\n",
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnreadableImage, match=None if data else r"empty \(0 bytes\)"):
            decode(tmp_path / name)
    for ext in ("webp", "tiff"):
        Image.fromarray(arr).save(tmp_path / f"ok.{ext}")
        assert decode(tmp_path / f"ok.{ext}").shape == (3, 32, 32)


def test_unreadable_permissions_are_replaced_and_counted(image_folder, monkeypatch, repre_log):
    """A file the process may not open (simulated: the tests run as root, which chmod does not stop); counted at
    each read (each epoch), named in a warning once per process."""
    from pathlib import Path

    source = ImageFolder(image_folder / "train")
    locked = source.path(3)
    real_read = Path.read_bytes

    def guarded(path):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", guarded)
    first, _, _ = load_or_replace(source, 3)
    for _ in range(2):  # two epochs
        img, _, skipped = load_or_replace(source, 3)
        assert skipped == 1 and torch.equal(img, first) and not torch.equal(img, source.load(2)[0])
    named = [m for m in repre_log.messages if "skipping unreadable image" in m]
    assert len(named) == 1 and "Permission denied" in named[0]


@pytest.mark.parametrize("workers", [0, 1])
def test_evaluation_leaves_an_unreadable_image_out_and_names_it_once(image_folder, workers, repre_log):
    """A score counts each readable image once: an unreadable one is not replaced by another (counted twice).
    It is named once per process, though each evaluation (a periodic k-NN) reads it again, from data workers."""
    from repre.data.evaluation import eval_loader

    broken = sorted((image_folder / "val" / "dog").iterdir())[2]
    broken.write_bytes(b"not an image")
    cfg = tiny_config("data.name=folder", f"data.root={image_folder}", "data.image_size=16", "eval.batch_size=4",
                      f"train.num_workers={workers}")
    for _ in range(2):
        batches = list(eval_loader(cfg, "test", None))
        labels = torch.cat([y for _, y in batches])
        assert [len(x) for x, _ in batches] == [4, 4, 3] and torch.bincount(labels).tolist() == [6, 5]
    named = [r for r in repre_log.records if "left out of the evaluation" in r.getMessage()]
    assert len(named) == 1 and broken.name in named[0].getMessage()


def test_images_smaller_than_the_crop_are_upscaled_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    for i, side in enumerate([8, 8, 40, 40]):
        save_png(tmp_path / "imgs" / f"{i}.png", rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    cfg = tiny_config("data.name=folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=16",
                      "train.batch_size=4")
    batch = next(iter(pretrain_loader(cfg, train_source(cfg), 0, False)))
    assert batch["views"].shape == (4, 2, 3, 16, 16) and int(batch["upscaled"]) == 2


@pytest.mark.parametrize("mode,orientation", [("RGB", None), ("RGB", 6), ("L", None), ("CMYK", None)])
def test_fast_jpeg_decoding_equals_pil(tmp_path, mode, orientation):
    """JPEGs go through torchvision's decoder where it can; the pixels are PIL's (EXIF rotation included)."""
    import io

    from repre.data.folder import _decode_fast, _decode_pil

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).convert(mode)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    path = tmp_path / "x.jpg"
    img.save(path, format="JPEG", quality=90, exif=exif.tobytes())
    data = path.read_bytes()
    pil = _decode_pil(io.BytesIO(data), path)
    assert decode(path).shape == pil.shape == ((3, 40, 24) if orientation == 6 else (3, 24, 40))
    fast = _decode_fast(data)
    assert fast is not None and torch.equal(fast, pil)
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage):
        decode(truncated)


def test_val_split_is_fixed_disjoint_and_covers_sorted_classes():
    train, val = val_split(100, 20)
    again = val_split(100, 20)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert len(train) == 80 and len(val) == 20 and not set(train.tolist()) & set(val.tolist())
    labels = torch.arange(100) // 50  # a class-sorted folder: two classes, in order
    assert set(labels[val].tolist()) == {0, 1}
    with pytest.raises(UserError, match="val_size=10 must be .*: --set eval.val_size=1 holds out a tenth"):
        val_split(10, 10)


def test_eval_split_val_never_reads_the_test_split(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, size=(40, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "fm", imgs, (np.arange(40) % 10).astype(np.uint8), "train")  # no t10k files at all
    cfg = tiny_config("data.name=fashion-mnist", f"data.root={tmp_path / 'fm'}", "data.image_size=28",
                      "eval.split=val", "eval.val_size=8")
    train, val = eval_source(cfg, "train"), eval_source(cfg, "test")
    assert len(train) == 32 and len(val) == 8
    with pytest.raises(UserError):  # the test split is missing: only split=test would need it
        eval_source(tiny_config("data.name=fashion-mnist", f"data.root={tmp_path / 'fm'}"), "test")


def test_subsets_of_a_class_sorted_folder_cover_every_class(tmp_path):
    for c in ("a", "b", "c"):  # a folder lists its images class by class
        for i in range(6):
            save_png(tmp_path / "imgs" / "train" / c / f"{i}.png", np.full((8, 8, 3), 40 * i, np.uint8))
    source = build_source(tiny_config("data.name=folder", f"data.root={tmp_path / 'imgs'}").data, "train")
    picked = subset_of(source, 6)
    assert len(picked) == 6 and sorted(source.load(i)[1] for i in picked.indices) == [0, 0, 1, 1, 2, 2]
    assert len(subset_of(source, 100)) == 18
    with pytest.raises(UserError, match="no val/ .* --set eval.split=val"):  # the other way to evaluate
        eval_source(tiny_config("data.name=folder", f"data.root={tmp_path / 'imgs'}"), "test")


def test_subsets_of_a_dataset_in_random_order_are_its_first_images(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, size=(40, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "fm", imgs, (np.arange(40) % 10).astype(np.uint8), "train")
    source = build_source(tiny_config("data.name=fashion-mnist", f"data.root={tmp_path / 'fm'}").data, "train")
    assert subset_of(source, 5).indices.tolist() == [0, 1, 2, 3, 4]  # the subsets every committed result used


def test_a_root_with_val_but_no_train_is_refused(tmp_path):
    for split in ("cat", "val/cat"):
        save_png(tmp_path / "imgs" / split / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UserError, match=r"holds val/ beside other folders \(cat\).*put the class folders in"):
        # else val/ would be a class of the train split
        build_source(tiny_config("data.name=folder", f"data.root={tmp_path / 'imgs'}").data, "train")


def test_per_view_blur_and_solarize_probabilities_follow_byol_and_dino():
    """BYOL's asymmetric views: the first always blurred and never solarized, the second blurred at 0.1 and
    solarized at 0.2; DINO's local crops (views 2 and up, its presets' third value) blurred at 0.5, never
    solarized (2,000 draws each)."""
    from repre.data.views import Photo, sample_view, view_rng

    aug = AugConfig(blur_prob=[1.0, 0.1, 0.5], solarize_prob=[0.0, 0.2, 0.0])  # DINO's presets' values
    spec = ViewSpec(aug, 16, (0.5,) * 3, (0.5,) * 3, local_crops=2, local_size=8)
    rates = []
    for v in (0, 1, 2, 3):
        photos = np.stack([sample_view(view_rng(0, 0, i, v), spec, v, 32, 32)[2] for i in range(2000)])
        rates.append(((photos[:, Photo.SIGMA] > 0).mean(), photos[:, Photo.SOLARIZE].mean()))
    expected = [(1.0, 0.0), (0.1, 0.2), (0.5, 0.0), (0.5, 0.0)]
    assert rates == [pytest.approx(rate, abs=0.03) for rate in expected]


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue", "jitter", "solarize", "gray", "blur"])
def test_each_photometric_operation_is_torchvisions(op):
    """Each operation of the batched photometric stage equals torchvision's, with a factor a sample (hue: each
    sample its own shift, both directions); the whole jitter is torchvision's four in repre's fixed order
    (brightness, contrast, saturation, hue); the blur torchvision's Gaussian of the same sigma and kernel."""
    from torchvision.transforms.v2 import functional as TF

    from repre.data.views import N_PHOTO, Photo

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g)
    photo = torch.zeros(4, N_PHOTO)
    photo[:, [Photo.BRIGHTNESS, Photo.CONTRAST, Photo.SATURATION]] = 1.0
    xf, f = x.float() / 255, 1.3
    if op in ("brightness", "contrast", "saturation"):
        photo[:, Photo.JITTER] = 1.0
        photo[:, {"brightness": Photo.BRIGHTNESS, "contrast": Photo.CONTRAST, "saturation": Photo.SATURATION}[op]] = f
        ref = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
               "saturation": TF.adjust_saturation}[op](xf, f)
    elif op == "hue":
        shifts = [0.1, -0.1, 0.37, -0.5]
        photo[:, Photo.JITTER], photo[:, Photo.HUE] = 1.0, torch.tensor(shifts)
        ref = torch.stack([TF.adjust_hue(image, shift) for image, shift in zip(xf, shifts, strict=True)])
    elif op == "jitter":
        factors = [(1.3, 0.7, 1.2, 0.1), (0.6, 1.4, 0.5, -0.3), (1.0, 1.0, 1.0, 0.0), (1.2, 1.2, 0.0, 0.5)]
        photo[:, Photo.JITTER] = 1.0
        photo[:, [Photo.BRIGHTNESS, Photo.CONTRAST, Photo.SATURATION, Photo.HUE]] = torch.tensor(factors)
        ref = torch.stack([TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(
            image, b), c), sat), h) for image, (b, c, sat, h) in zip(xf, factors, strict=True)])
    elif op == "blur":
        sigmas = [0.1, 0.7, 1.5, 2.0]
        photo[:, Photo.SIGMA] = torch.tensor(sigmas)
        k = ViewSpec(AugConfig(), 16, (0.0,) * 3, (1.0,) * 3).blur_kernel_for(16)
        assert k == 13  # +-3 sigma of the largest, 2.0
        ref = torch.stack([TF.gaussian_blur(image, [k, k], [s, s]) for image, s in zip(xf, sigmas, strict=True)])
    elif op == "solarize":
        photo[:, Photo.SOLARIZE] = 1.0
        ref = TF.solarize(xf, 0.5)
    else:
        photo[:, Photo.GRAY] = 1.0
        ref = TF.rgb_to_grayscale(xf, num_output_channels=3)
    spec = ViewSpec(AugConfig(), 16, (0.0,) * 3, (1.0,) * 3)
    torch.testing.assert_close(photometric(x, photo, spec), ref, atol=2e-3, rtol=0)


def test_a_folder_without_classes_or_with_one_is_told_what_evaluation_needs(tmp_path):
    """A flat folder: its missing val/ is not answered with a hold-out (still no labels); one class: no score
    (every prediction would be right); Fashion-MNIST's default name on a folder of images: data.name=folder."""
    from repre.data.labels import labelled

    for i in range(4):
        save_png(tmp_path / "flat" / f"{i}.png", np.full((8, 8, 3), 40 * i, np.uint8))
        save_png(tmp_path / "one" / "train" / "all" / f"{i}.png", np.full((8, 8, 3), 40 * i, np.uint8))
    save_png(tmp_path / "flat" / "trip" / "day0" / "x.png", np.zeros((8, 8, 3), np.uint8))  # loose images beside
    with pytest.raises(UserError, match="its images no classes: .* `repre eval recon --set eval.split=val --set "
                                        "eval.val_size=N`"):
        eval_source(tiny_config("data.name=folder", f"data.root={tmp_path / 'flat'}"), "test")  # a sub-folder too
    one = build_source(tiny_config("data.name=folder", f"data.root={tmp_path / 'one'}").data, "train")
    with pytest.raises(UserError, match=r"k-NN needs at least 2 classes; these images have one \(all\)"):
        labelled(one, "k-NN")
    (tmp_path / "afile").write_text("x")
    for root, what in (("nowhere", "does not exist"), ("afile", "is a file, not a folder")):
        for split in ("train", "test"):  # the test split first: recon, show, embed --split test
            with pytest.raises(UserError, match=f"data.root .*{root} {what}"):
                eval_source(tiny_config("data.name=folder", f"data.root={tmp_path / root}"), split)
    (tmp_path / "empty").mkdir()  # a folder made for the Fashion-MNIST files: how to get them
    save_png(tmp_path / "deep" / "train" / "cat" / "2019" / "x.png", np.zeros((8, 8, 3), np.uint8))
    for root, message in (("flat", "holds images.* add --set data.name=folder"), ("one", "add --set data.name=folder"),
                          ("deep", "add --set data.name=folder"), ("empty", "Fashion-MNIST not found")):
        with pytest.raises(UserError, match=message):
            build_source(tiny_config("data.name=fashion-mnist", f"data.root={tmp_path / root}").data, "train")


def test_a_folder_that_cannot_be_listed_is_named_not_silently_left_out(tmp_path, monkeypatch, repre_log):
    """Its images are left out with a warning naming it; no image readable at all says why (was: "no images")."""
    for c in ("cat", "dog"):
        for i in range(2):
            save_png(tmp_path / c / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    listed = os.scandir

    def scandir(path):
        if "dog" in str(path) or refused_root:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return listed(path)

    refused_root = False
    monkeypatch.setattr(os, "scandir", scandir)
    folder = ImageFolder(tmp_path)
    assert len(folder) == 2 and folder.classes == ["cat"]
    assert f"cannot list 1 folder(s), their images left out: {tmp_path / 'dog'} (Permission denied)" in repre_log.text
    refused_root = True
    with pytest.raises(UserError, match="no readable images .* give this user read access"):
        ImageFolder(tmp_path)


OWN_DATA = '''
import threading

import numpy as np

class Arrays:
    classes = ["dark", "light"]

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 2, n)
        self.x = [rng.integers(0, 100, (20, 20), dtype=np.uint8) + 150 * y for y in self.labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if i == 5:
            raise OSError("file 5 is cut short")
        return self.x[i], int(self.labels[i])

calls = []

def images(split, root):
    calls.append((split, root))
    return Arrays(64 if split == "train" else 32, 0 if split == "train" else 1)

def train_only(split, root):
    if split != "train":
        raise FileNotFoundError(f"{root}/{split}.npy")
    return Arrays(8, 0)

class Items:
    classes = np.array(["a", "b"])

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

grey = np.zeros((4, 4), np.uint8)

def odd_items(split, root):
    return Items([(grey, 1, "meta"), {"image": grey}, (grey, 2), grey, (grey, "b")])

def sorted_classes(split, root):
    return Items([(grey, 0)] * 8 + [(grey, 1)] * 8)

def empty(split, root):
    return Items([])

class BrokenLength(Items):
    def __len__(self):
        raise RuntimeError("database connection closed")

def broken_length(split, root):
    return BrokenLength([])

class Locked(Items):
    def __init__(self, items):
        super().__init__(items)
        self.lock = threading.Lock()

def locked(split, root):
    return Locked([(grey, 0)])

def float_labels(split, root):
    return Items([(grey, 1.0), (grey, 1.7), (grey, "1"), (grey, float("inf"))])

not_a_function = 3
'''


def test_a_dataset_of_ones_own_code_trains_evaluates_and_exports(tmp_path, monkeypatch, repre_log):
    """data.name=python: the function data.source names gives each split; a run trains on it, and its evaluation
    and export call it again from the run's config (an image it cannot read skipped, as a folder's). The
    checkpoint records the module's file: a command reading the run where the file has changed says so."""
    from conftest import last_json, pretrain_args, run_cli
    from repre.core import checkpoint_io
    from repre.data.python_source import check_code
    from repre.pretrained import load_checkpoint_config

    (tmp_path / "own_images_for_test.py").write_text(OWN_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    args = pretrain_args(run, "data.name=python", "data.source=own_images_for_test:images", f"data.root={tmp_path}",
                         "train.max_steps=2", "eval.recon.images=2")
    code, stdout = run_cli(args)
    import own_images_for_test

    assert code == 0 and last_json(stdout)["knn_top1"] is not None
    calls = own_images_for_test.calls
    assert ("train", str(tmp_path)) in calls and ("test", str(tmp_path)) in calls
    code, stdout = run_cli(["eval", "knn", "--checkpoint", str(run)])
    assert code == 0 and last_json(stdout)["metric"] == "top1"
    code, stdout = run_cli(["export", "--checkpoint", str(run), "--out", str(tmp_path / "e.safetensors")])
    assert code == 0 and last_json(stdout)["check"]["transform_images"] == 16  # the crop chosen on its images
    module = tmp_path / "own_images_for_test.py"
    recorded = checkpoint_io.load(run / "checkpoints" / "last.pt")["data_code"]
    assert recorded == {"file": str(module.resolve()), "sha256": hashlib.sha256(module.read_bytes()).hexdigest()}
    assert "the images may not be those" not in repre_log.text
    module.write_text(OWN_DATA.replace("calls = []", "calls = []  # edited"))
    load_checkpoint_config(run)
    changed = f"{module.resolve()} has changed since (sha256 {recorded['sha256'][:12]} -> "
    assert changed in repre_log.text
    repre_log.clear()
    code, _ = run_cli([*args, "--resume"])  # the run is done: it says so, and nothing more
    assert code == 0 and changed in repre_log.text  # resuming says it too
    repre_log.clear()
    moved = {"file": "/elsewhere/own_images_for_test.py", "sha256": hashlib.sha256(module.read_bytes()).hexdigest()}
    check_code("own_images_for_test:images", moved, run)
    assert "may not be those" not in repre_log.text  # the same code at another path (a moved checkout)


def test_a_dataset_of_ones_own_code_is_named_checked_and_read_as_rgb(tmp_path, monkeypatch):
    from repre.config import load_config
    from repre.data.python_source import as_image, python_source

    (tmp_path / "own_images_for_check.py").write_text(OWN_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="data.source names as module:function"):
        load_config(None, ["data.name=python"])
    with pytest.raises(UserError, match="read with data.name=python only"):
        load_config(None, ["data.source=own_images_for_check:images"])
    for source, why in (("no_such_module_here:images", "no module no_such_module_here on the Python path"),
                        ("own_images_for_check:not_a_function", "has no function not_a_function")):
        with pytest.raises(UserError, match=why):
            python_source(load_config(None, ["data.name=python", f"data.source={source}"]).data, "train")
    source = python_source(load_config(None, ["data.name=python", "data.source=own_images_for_check:images"]).data,
                           "train")
    assert (len(source), source.num_classes, source.classes) == (64, 2, ["dark", "light"])
    image, label = source.load(0)
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 20) and label in (0, 1)
    with pytest.raises(UnreadableImage, match=r"own_images_for_check:images\[5\]: file 5 is cut short"):
        source.load(5)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)  # 3 rows: an array's last axis is its channels
    for given in (grey, grey[..., None], torch.from_numpy(grey)[None].float() / 255, torch.from_numpy(grey),
                  Image.fromarray(grey).convert("RGBA"), np.stack([grey] * 4, axis=-1)):
        assert torch.equal(as_image(given, "x"), torch.from_numpy(grey).expand(3, -1, -1)), type(given)
    with pytest.raises(UserError, match=r"x is an image of shape \[2, 3, 4, 5\]"):
        as_image(np.zeros((2, 3, 4, 5)), "x")
    with pytest.raises(UserError, match=r"shape \[28, 28, 3\] \(channels last: a tensor's are first"):
        as_image(torch.zeros(28, 28, 3), "x")
    assert as_image(np.array([[0, 65535]], dtype=np.uint16), "x")[0].tolist() == [[0, 255]]  # 16 bits scaled
    assert as_image(np.array([[True, False]]), "x")[0].tolist() == [[255, 0]]  # a mask, as PIL's mode "1"
    assert as_image(np.full((1, 2), 7, dtype=np.uint32), "x")[0].tolist() == [[7, 7]]  # torch has no min of uint32
    for bad, why in ((np.array([[-5, 1000]], dtype=np.int16), "int16 pixels from -5 to 1000"),
                     (np.array([[300]], dtype=np.uint64), "uint64 pixels from 300 to 300"),
                     (np.array([[np.nan, 1.0]]), "not finite"),  # NaN read as 0
                     (np.array([[0.0, 255.0]]), "float pixels from 0 to 255"), ({"a": 1}, "of type dict"),
                     (Image.fromarray(np.array([[0.0, 255.0]], np.float32)), "float pixels from 0 to 255"),
                     (Image.fromarray(np.array([[0, 1000]], np.int32)), "int32 pixels from 0 to 1000")):
        with pytest.raises(UserError, match=why):  # values that would wrap, clip or be scaled image by image
            as_image(bad, "x")
    floats, ints = np.array([[0.0, 0.5, 1.0]], np.float32), np.array([[0, 7, 255]], np.int32)
    for held in (floats, ints):  # PIL's modes F and I as the arrays they hold
        assert torch.equal(as_image(Image.fromarray(held), "x"), as_image(held, "x"))


def test_a_dataset_of_ones_own_code_is_refused_where_it_would_mislead(tmp_path, monkeypatch):
    """Python's and installed packages' functions are not called (a run's config could name shutil:rmtree); the
    function's error, an item that is no (image, label), a label beyond its classes or none where it has classes
    are said; a class-sorted dataset's subset spreads over its classes."""
    from repre.config import load_config
    from repre.data.python_source import python_source
    from repre.data.splits import subset_of

    (tmp_path / "own_items_for_check.py").write_text(OWN_DATA)
    (tmp_path / "victim").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))

    def source(name: str, split: str = "train", root: str | None = None):
        extra = [f"data.root={root}"] if root else []
        return python_source(load_config(None, ["data.name=python", f"data.source={name}", *extra]).data, split)

    for library in ("shutil:rmtree", "numpy:save"):
        with pytest.raises(UserError, match="is a module of Python or of an installed package"):
            source(library, root=str(tmp_path / "victim"))
    assert (tmp_path / "victim").is_dir()
    with pytest.raises(UserError, match="__main__ .* is no module other processes can import; put the function in "
                                        "a file of its own"):  # a notebook's function (a ValueError of importlib)
        source("__main__:images")
    with pytest.raises(UserError, match="no module name before the function"):
        source(".own_items_for_check:images")
    with pytest.raises(UserError, match=r"raised for the test split: FileNotFoundError: .*/test.npy'? \(at "
                       r".*own_items_for_check.py:\d+ in train_only: raise FileNotFoundError"):  # where, in your code
        source("own_items_for_check:train_only", "test", str(tmp_path))
    (tmp_path / "own_typo_for_check.py").write_text("import numpy\nx = undefined_name\n")
    (tmp_path / "own_syntax_for_check.py").write_text("def images(split, root)\n    return 1\n")
    for module, why in (("own_typo_for_check", r"NameError: name 'undefined_name' is not defined \(at "
                                               r".*own_typo_for_check.py:2 in <module>: x = undefined_name\)"),
                        ("own_syntax_for_check", r"SyntaxError: expected ':' \(at .*own_syntax_for_check.py:1: "
                                                 r"def images\(split, root\)\)")):
        with pytest.raises(UserError, match=f"importing {module} failed: {why}"):
            source(f"{module}:images")
    with pytest.raises(UserError, match="gave an empty dataset for the train split"):
        source("own_items_for_check:empty")
    with pytest.raises(UserError, match=r"len\(\) of data.source=own_items_for_check:broken_length's train dataset "
                       r"raised RuntimeError: database connection closed \(at .*own_items_for_check.py:\d+ in "
                       r"__len__"):
        source("own_items_for_check:broken_length")
    import pickle

    with pytest.raises(UserError, match=r"own_items_for_check:locked's dataset cannot be sent to the data workers, "
                       r"which start by \w+ here and receive it pickled: TypeError: cannot pickle '_thread.lock'"):
        pickle.dumps(source("own_items_for_check:locked"))  # what spawn and forkserver do with a worker's dataset
    sent = pickle.loads(pickle.dumps(source("own_items_for_check:sorted_classes")))
    assert len(sent) == 16 and sent.load(9)[1] == 1
    floats = source("own_items_for_check:float_labels")
    assert floats.load(0)[1] == 1  # a whole number stored as a float is its class
    for index, why in ((1, "has label 1.7"), (2, "has label '1'"), (3, "has label inf")):  # no class 1
        with pytest.raises(UserError, match=why):
            floats.load(index)
    odd = source("own_items_for_check:odd_items")
    assert odd.classes == ["a", "b"] and odd.load(0)[1] == 1  # (image, label, more): the first two
    for index, why in ((1, r"\[1\] is of type dict"), (2, r"\[2\] has label 2; the dataset's classes \(2: a, b\)"),
                       (3, r"\[3\] has label None"), (4, r"\[4\] has label 'b'"),
                       (5, r"\[5\] raised IndexError: list index out of range \(at .*own_items_for_check.py:\d+ in "
                           r"__getitem__: return self.items\[i\]\); mend the dataset, or raise OSError")):
        with pytest.raises(UserError, match=why):
            odd.load(index)
    labels = [label for _, label in (source("own_items_for_check:sorted_classes").load(i)
                                     for i in subset_of(source("own_items_for_check:sorted_classes"), 4).indices)]
    assert labels == [0, 0, 1, 1]  # spread: the first 4 would be one class
    held_out = select(source("own_items_for_check:sorted_classes"), torch.arange(2, 16, 2))  # as eval.split=val's
    assert [held_out.load(i)[1] for i in subset_of(held_out, 2).indices.tolist()] == [0, 1]  # spread too


def test_a_generated_image_and_its_views_draw_different_numbers():
    """NumPy pads a short seed key with zeros: the image's key (seed, split, index) must not be any view's
    (seed, epoch, index, view), or the first view of epoch 0 replays the draws that made its image."""
    from repre.data.synthetic import image_rng
    from repre.data.views import view_rng

    for index in range(4):
        made = image_rng(3, "train", index).random(4)
        assert not any(np.array_equal(made, view_rng(3, 0, index, view).random(4)) for view in range(3))


def test_split_folders_are_read_by_their_names_and_a_class_named_train_is_not_taken_for_one(tmp_path):
    """training/ and validation/ (ADE20K's names) are splits: read as two classes, the run trained on the
    validation images. A class folder named train (Pascal VOC's) among other classes was read as the whole
    training split: refused, saying how to lay it out."""
    from repre.config import DataConfig

    grey = np.zeros((8, 8, 3), np.uint8)
    for split, cls in (("training", "a"), ("training", "b"), ("validation", "a"), ("validation", "b")):
        save_png(tmp_path / "ade" / split / cls / "0.png", grey)
    (tmp_path / "ade" / "lost+found").mkdir()  # a mount point's: no images, left alone
    save_png(tmp_path / "ade" / "devkit" / "preview.png", grey)  # an image beside the two splits: left alone too
    train = build_source(DataConfig(name="folder", root=str(tmp_path / "ade")), "train")
    test = build_source(DataConfig(name="folder", root=str(tmp_path / "ade")), "test")
    assert (len(train), train.num_classes, len(test)) == (2, 2, 2)
    for cls in ("aeroplane", "bus", "train"):
        save_png(tmp_path / "voc" / cls / "0.png", grey)
    with pytest.raises(UserError, match="a class named train would be taken for a split"):
        build_source(DataConfig(name="folder", root=str(tmp_path / "voc")), "train")


def test_a_folder_link_loop_and_a_fifo_named_like_an_image_are_left_out(tmp_path, repre_log):
    """os.walk follows a link back up the tree again and again (the images counted ~40 times); a FIFO named
    .jpg blocked its reader for good (a run that no signal stopped)."""
    grey = np.zeros((8, 8, 3), np.uint8)
    save_png(tmp_path / "loop" / "a.png", grey)
    save_png(tmp_path / "loop" / "sub" / "b.png", grey)
    (tmp_path / "loop" / "sub" / "up").symlink_to("..")
    assert len(ImageFolder(tmp_path / "loop")) == 2 and "read already under another name (a link)" in repre_log.text
    os.mkfifo(tmp_path / "loop" / "pipe.png")
    folder = ImageFolder(tmp_path / "loop")
    assert repre_log.text.count("read already under another name") == 1  # a second scan (k-NN's) says it no more
    pipe = [folder.names[i] for i in range(len(folder))].index("pipe.png")
    with pytest.raises(UnreadableImage, match="not a regular file"):
        folder.load(pipe)
    with pytest.raises(UnreadableImage, match="not a regular file"):
        folder.encoded(pipe)


def test_hidden_files_and_folders_are_not_images_of_the_dataset(tmp_path):
    """Jupyter's .ipynb_checkpoints/ (copies of the images), macOS's __MACOSX/ and ._ files: they were read as
    images, and a hidden folder at the top as a class."""
    grey = np.zeros((8, 8, 3), np.uint8)
    for name in ("cat/0.png", "dog/0.png", "cat/.ipynb_checkpoints/0.png", ".ipynb_checkpoints/1.png",
                 "__MACOSX/cat/._0.png", "cat/._1.png"):
        save_png(tmp_path / "imgs" / name, grey)
    folder = ImageFolder(tmp_path / "imgs")
    assert len(folder) == 2 and folder.classes == ["cat", "dog"]
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "dog" / "1.JFIF", "JPEG")  # a web download's name on Windows
    assert len(ImageFolder(tmp_path / "imgs")) == 3


def test_a_split_folders_classes_are_the_folders_that_hold_images(tmp_path, repre_log):
    """Both splits of a folder label by the train split's classes: they were every folder in train/, so a
    hidden folder, an empty one, one of text files or a link to a class made classes of no image (labels
    shifted, a probe predicting them, one class counted as two). Of a folder and a link to it, the one first by
    name is read (the scan's order, which a resumed run's images keep), the other named."""
    from repre.config import DataConfig

    grey = np.zeros((8, 8, 3), np.uint8)
    for name in ("train/a/0.png", "train/b/0.png", "train/z/0.png", "train/.ipynb_checkpoints/0.png",
                 "val/a/0.png", "val/z/0.png"):
        save_png(tmp_path / name, grey)
    for empty in ("train/__MACOSX", "train/empty/sub", "train/notes"):
        (tmp_path / empty).mkdir(parents=True)
    (tmp_path / "train/notes/read.txt").write_text("no image")
    (tmp_path / "train/a_link").symlink_to("z")
    cfg = DataConfig(name="folder", root=str(tmp_path))
    train = build_source(cfg, "train")
    assert train.classes == ["a", "a_link", "b"] and train.num_classes == 3
    assert [(train.names[i], int(train.labels[i])) for i in range(len(train))] == [
        ("a/0.png", 0), ("a_link/0.png", 1), ("b/0.png", 2)]
    assert "read already under another name (a link), left out: " + str(tmp_path / "train/z") in repre_log.text
    with pytest.raises(UserError, match="has classes the train split lacks: z"):
        build_source(cfg, "test")
    (tmp_path / "val/z").rename(tmp_path / "val/a_link")  # the held-out split names it as the train split reads it
    test = build_source(cfg, "test")
    assert test.classes == train.classes and test.labels.tolist() == [0, 1]
    said = f"2 folder(s) in {tmp_path / 'train'} hold no image and are no class: empty, notes"
    assert said in repre_log.text


def test_a_held_out_folder_evaluation_does_not_read_is_named(tmp_path, repre_log):
    """With val/ and test/, evaluation reads val/: test/ was never read, nor said to be left."""
    from repre.config import DataConfig

    grey = np.zeros((8, 8, 3), np.uint8)
    for name in ("train/a/0.png", "val/a/0.png", "test/a/0.png", "test/a/1.png"):
        save_png(tmp_path / name, grey)
    assert len(build_source(DataConfig(name="folder", root=str(tmp_path)), "test")) == 1
    assert (f"{tmp_path} holds val/ and test/: evaluation reads val/, the first of val/, valid/, validation/, test/; "
            f"to evaluate on test/, point data.root at a folder of two links, train -> {tmp_path}/train and "
            f"val -> {tmp_path}/test") in repre_log.text


def test_an_image_larger_than_pillow_decodes_is_unreadable_in_every_format(tmp_path, monkeypatch):
    """Pillow refuses an image of more than twice `MAX_IMAGE_PIXELS` (a decompression bomb): a PNG was refused in
    its words, a JPEG of the same size decoded by torchvision's path. One rule now, in words that say what to do;
    the JPEG's size is read from its frame header (a baseline, a progressive and one behind a long EXIF block)."""
    from repre.data.folder import jpeg_pixels

    exif = {"exif": b"Exif\0\0" + bytes(60000)}
    for name, kw in (("base.jpg", {}), ("prog.jpg", {"progressive": True}), ("exif.jpg", exif)):
        Image.new("RGB", (50, 60)).save(tmp_path / name, "JPEG", **kw)
        assert jpeg_pixels((tmp_path / name).read_bytes()) == 3000
    Image.new("RGB", (50, 60)).save(tmp_path / "big.png")
    data = (tmp_path / "base.jpg").read_bytes()
    (tmp_path / "stray.jpg").write_bytes(data[:20] + b"\0\0\0" + data[20:])  # bytes libjpeg skips: PIL reads the size
    assert jpeg_pixels((tmp_path / "stray.jpg").read_bytes()) is None
    assert decode(tmp_path / "base.jpg").shape == (3, 60, 50)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("base.jpg", "prog.jpg", "stray.jpg", "big.png"):
        with pytest.raises(UnreadableImage, match=r"3,000 pixels, more than the 2,000 Pillow decodes \(its guard "
                                                  r"against decompression bombs\): downscale it"):
            decode(tmp_path / name)


def test_a_python_dataset_s_module_reloaded_gives_its_new_images(tmp_path, monkeypatch):
    """A notebook edits its module and reloads it (importlib.reload): the next run read the dataset made from
    the old code, and recorded the new file's SHA-256."""
    import importlib

    from repre.config import DataConfig
    from repre.data.python_source import python_source

    module = tmp_path / "reloaded_images_for_test.py"
    code = "import numpy as np\nN = {}\ndef images(split, root):\n    return [np.zeros((8, 8, 3), np.uint8)] * N\n"
    module.write_text(code.format(8))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = DataConfig(name="python", source="reloaded_images_for_test:images")
    assert len(python_source(cfg, "train")) == 8
    assert len(python_source(cfg, "train")) == 8  # made once: the same function
    import reloaded_images_for_test

    module.write_text(code.format(12))
    importlib.reload(reloaded_images_for_test)
    assert len(python_source(cfg, "train")) == 12


def test_a_callable_object_as_data_source_is_made_once_though_it_does_not_hash(tmp_path, monkeypatch):
    from repre.config import DataConfig
    from repre.data.python_source import python_source

    (tmp_path / "callable_images_for_test.py").write_text(
        "from dataclasses import dataclass\n"
        "import numpy as np\n"
        "@dataclass\n"
        "class Maker:\n"
        "    n: int\n"
        "    made: int = 0\n"
        "    def __call__(self, split, root):\n"
        "        self.made += 1\n"
        "        return [np.zeros((8, 8, 3), np.uint8)] * self.n\n"
        "images = Maker(6)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = DataConfig(name="python", source="callable_images_for_test:images")
    assert len(python_source(cfg, "train")) == len(python_source(cfg, "train")) == 6
    import callable_images_for_test

    assert callable_images_for_test.images.made == 1


def test_split_folders_are_found_whatever_their_case(image_folder):
    """`Train/` and `Test/` (a Kaggle download's) were read as two classes of one training split: the test
    images trained on, and k-NN said there was no held-out folder."""
    (image_folder / "train").rename(image_folder / "Train")
    (image_folder / "val").rename(image_folder / "Test")
    cfg = tiny_config("data.name=folder", f"data.root={image_folder}")
    train, test = train_source(cfg), eval_source(cfg, "test")
    assert (train.root, train.classes) == (image_folder / "Train", ["cat", "dog"])
    assert (test.root, len(test)) == (image_folder / "Test", 12)


def test_a_stray_image_beside_class_folders_is_said_and_a_train_root_names_its_parent(image_folder, repre_log):
    """One file beside the class folders made every image unlabelled without a word; data.root at train/ was
    told to make train/train/."""
    from repre.errors import NoTestSplit

    save_png(image_folder / "train" / "stray.png", np.zeros((20, 24, 3), np.uint8))
    assert ImageFolder(image_folder / "train").classes == []
    assert "1 image(s) lie beside its 2 sub-folders (stray.png first)" in repre_log.text
    with pytest.raises(NoTestSplit, match=f"data.root {image_folder / 'train'} is a training split itself: point "
                                          f"data.root at {image_folder},"):
        eval_source(tiny_config("data.name=folder", f"data.root={image_folder / 'train'}"), "test")


def test_the_hint_for_unlabelled_images_works_as_printed(tmp_path):
    """It suggested `repre eval recon --set eval.split=val`, which failed on any folder of 10,000 images or
    fewer (eval.val_size's default), and said those images were held out (pre-training read them)."""
    from repre.errors import NoTestSplit

    for i in range(4):
        save_png(tmp_path / "flat" / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(NoTestSplit, match=r"--set eval.split=val --set eval.val_size=N` measures the "
                                          r"reconstructions of N training images \(which pre-training read\)"):
        eval_source(tiny_config("data.name=folder", f"data.root={tmp_path / 'flat'}"), "test")
    with pytest.raises(UserError, match=r"eval.val_size=4 must be from 1 to 3, fewer than the train split's 4"):
        val_split(4, 4)


LAZY_FILES = '''
from pathlib import Path

from PIL import Image


class Files:
    """The usual dataset of files: opened in __getitem__, decoded when first used."""

    def __init__(self, split, root):
        self.paths = sorted(Path(root).glob("*.png"))

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return Image.open(self.paths[i]), 0
'''


def test_a_file_your_dataset_opens_lazily_and_that_is_cut_short_is_left_out_and_named(tmp_path, monkeypatch,
                                                                                      repre_log):
    """`Image.open` in __getitem__ decodes later, where the OSError of a truncated file escaped the run (and its
    EXIF warning named "an image")."""
    from repre.config import load_config
    from repre.data.python_source import python_source

    for i in range(3):
        save_png(tmp_path / f"{i}.png", np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    whole = (tmp_path / "1.png").read_bytes()
    (tmp_path / "1.png").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "lazy_files_for_check.py").write_text(LAZY_FILES)
    monkeypatch.syspath_prepend(str(tmp_path))
    source = python_source(load_config(None, ["data.name=python", "data.source=lazy_files_for_check:Files",
                                              f"data.root={tmp_path}"]).data, "train")
    assert source.load(0)[0].shape == (3, 16, 16)
    with pytest.raises(UnreadableImage, match=r"lazy_files_for_check:Files\[1\]: image file is truncated"):
        source.load(1)
    image, _, skipped = load_or_replace(source, 1)  # another image, counted, and a warning naming the item
    assert image.shape == (3, 16, 16) and skipped == 1
    assert "EXIF" not in repre_log.text and "lazy_files_for_check:Files[1]" in repre_log.text


@pytest.mark.parametrize("name,root,why", [
    ("folder", "s3://bucket/photos", "reads a local or mounted folder, not a URL"),
    ("folder", "https://host/photos", "reads a local or mounted folder, not a URL"),
    ("shards", "s3://bucket/train-{0..3}.tar", r"not from s3:// ones; .*'data.root=pipe:aws s3 cp s3://bucket/"),
    ("shards", "gs://bucket/train-{0..3}.tar", "not from gs:// ones"),
])
def test_a_url_root_where_a_local_path_is_read_is_refused_with_what_to_give(name, root, why):
    """The URL was made a path ("s3:/bucket/...": its // joined) and reported missing."""
    cfg = tiny_config(f"data.name={name}", f"data.root={root}")
    with pytest.raises(UserError, match=why):
        build_source(cfg.data, "train")
    if name == "shards":
        with pytest.raises(UserError, match=why):  # streamed by choice: the same
            build_source(tiny_config(f"data.name={name}", f"data.root={root}", "data.shard_access=stream").data,
                         "train")
    with pytest.raises(UserError, match="is read as a stream, not with random access"):
        build_source(tiny_config("data.name=shards", "data.root=https://host/s-{0..3}.tar",
                                 "data.shard_access=random").data, "train")
