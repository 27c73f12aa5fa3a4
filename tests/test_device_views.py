"""data.device_stages=crops and decode: crops cut and JPEGs decoded where the model runs (here the
CPU), from the parameters the workers draw, against the worker path."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from conftest import LOCAL_AUG, last_json, pretrain_args, run_cli, save_png, tiny_config
from repre.data import device_views
from repre.data.device_views import crop_on_device, crop_sets, jpeg_shape, resample_weights, unpack
from repre.data.pipeline import Stages, ViewCollate, ViewDataset, finish_views, pretrain_loader, view_spec
from repre.data.sources import build_source
from repre.data.splits import subset_of, train_source
from repre.errors import UserError

CUDA = torch.device("cuda")  # Stages.of reads the type alone: the stages of a GPU run, without a GPU


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.fixture
def mixed_folder(tmp_path):
    """Two classes of images of many sizes: RGB and grayscale JPEGs, PNGs, one smaller than the crop."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(8):
            h, w = (int(v) for v in rng.integers(10, 70, 2))
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            path = tmp_path / "imgs" / "train" / c / f"{i}.{'png' if i % 3 == 0 else 'jpg'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr[..., 0] if i == 4 else arr).save(path)
    return tmp_path / "imgs"


def test_resample_weights_equal_torchvision_resized_crop():
    """Down- and upscaling boxes of every shape: Ry @ image @ Rx^T is torchvision's antialiased float
    resized_crop up to float rounding, and a flip is Rx's rows reversed."""
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        H, W, S = (int(torch.randint(4, 70, (), generator=g)) for _ in range(3))
        h, w = int(torch.randint(1, H + 1, (), generator=g)), int(torch.randint(1, W + 1, (), generator=g))
        top, left = int(torch.randint(0, H - h + 1, (), generator=g)), int(torch.randint(0, W - w + 1, (), generator=g))
        img = torch.rand(3, H, W, generator=g) * 255
        ref = TF.resized_crop(img, top, left, h, w, [S, S], antialias=True)
        ry = resample_weights(torch.tensor([top]), torch.tensor([h]), H, S)[0]
        rx = resample_weights(torch.tensor([left]), torch.tensor([w]), W, S)[0]
        torch.testing.assert_close(ry @ img @ rx.T, ref, atol=2e-3, rtol=0)
        torch.testing.assert_close(ry @ img @ rx.flip(0).T, ref.flip(-1), atol=2e-3, rtol=0)


def test_crops_of_a_batch_of_sizes_in_chunks(monkeypatch):
    """Images of different sizes, padded together or cut into one-image chunks: the same views, each within one
    grey level of torchvision's uint8 resized_crop."""
    g = torch.Generator().manual_seed(1)
    shapes = [(30, 50), (64, 20), (17, 17), (50, 30)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in shapes]
    boxes = torch.tensor([[[0, 0, h, w], [h // 4, w // 3, h // 2, w // 2]] for h, w in shapes])
    flips = torch.tensor([[False, True], [True, False], [False, False], [True, True]])
    together = crop_sets(images, [(boxes, flips, 24)])[0]
    monkeypatch.setattr(device_views, "CHUNK_ELEMENTS", 1)
    assert torch.equal(crop_sets(images, [(boxes, flips, 24)])[0], together)
    for i, img in enumerate(images):
        for v in range(2):
            ref = TF.resized_crop(img, *boxes[i, v].tolist(), size=[24, 24], antialias=True)
            ref = ref.flip(-1) if flips[i, v] else ref
            assert (together[i, v].int() - ref.int()).abs().max() <= 1


@pytest.mark.parametrize("decode_on_device", [False, True])
def test_views_cut_on_the_device_equal_the_workers(mixed_folder, decode_on_device):
    """The same boxes, flips and photometric parameters as the worker path, so the same views within one grey
    level (the worker path rounds between its passes); JPEGs travel as bytes only with device_stages=decode."""
    cfg = tiny_config("method.name=dino", "method.dino.out_dim=16", "data.local_crops=2", "data.local_size=8",
                      *LOCAL_AUG, "data.name=folder", f"data.root={mixed_folder}", "data.image_size=16")
    source = train_source(cfg)
    spec = view_spec(cfg, source)
    keys = [(3, i) for i in range(len(source))]
    workers = ViewCollate(spec, photometric=False)([ViewDataset(source, spec, 7)[k] for k in keys])
    ds = ViewDataset(source, spec, 7, crops_on_device=True, decode_on_device=decode_on_device)
    packed = ViewCollate(spec, photometric=False)([ds[k] for k in keys])
    assert bool(packed["encoded"].any()) == (packed["jpeg"].numel() > 0) == decode_on_device
    pixels = sum(3 * h * w for h, w in packed["shapes"].tolist())
    assert (packed["pixels"].numel() < pixels) == decode_on_device
    assert int(packed["upscaled"]) == int(workers["upscaled"]) > 0
    cut = crop_on_device(dict(packed), spec.size, spec.local_size)
    for key in ("views", "local_views"):
        assert cut[key].shape == workers[key].shape and cut[key].dtype == torch.uint8
        diff = (cut[key].int() - workers[key].int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.5, key
        assert torch.equal(cut[key.replace("views", "photo")], workers[key.replace("views", "photo")])
    done, ref = finish_views(dict(packed), spec), finish_views(dict(workers), spec)
    assert done["views"].dtype == torch.float32
    # one grey level in, scaled by the jitter and the normalization, is a few hundredths out; a near-grey pixel's
    # hue moves with it, and so its colours by up to its few levels of chroma (as torchvision's hue shift does):
    # a few elements by more
    far = ((done["views"] - ref["views"]).abs() > 0.04).float().mean()
    torch.testing.assert_close(done["views"], ref["views"], atol=0.1, rtol=0)
    assert far < 1e-3, float(far)


def test_jpeg_shape_sends_only_what_the_device_decodes(tmp_path):
    """RGB and grayscale JPEGs travel as bytes; EXIF-rotated (nvJPEG ignores EXIF), CMYK, PNG and truncated
    files are decoded in the workers."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    assert jpeg_shape(_jpeg(arr)) == (12, 20)
    assert jpeg_shape(_jpeg(arr[..., 0])) == (12, 20)
    exif = Image.Exif()
    exif[0x0112] = 6
    assert jpeg_shape(_jpeg(arr, exif=exif.tobytes())) is None
    cmyk = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(cmyk, format="JPEG")
    assert jpeg_shape(cmyk.getvalue()) is None
    png = save_png(tmp_path / "x.png", arr).read_bytes()
    assert jpeg_shape(png) is None
    data = _jpeg(arr)
    assert jpeg_shape(data[: len(data) // 2]) is None


def _undecodable(good: bytes) -> bytes:
    """A JPEG with `good`'s headers (its size passes the worker's check) and entropy-coded data no decoder reads."""
    header_end = good.index(b"\xff\xda")  # start of scan
    return good[:header_end] + b"\xff\xda\x00\x02" + b"\xff\x00" * 3 + b"\xff\xd9"


def test_a_jpeg_no_decoder_reads_becomes_grey_and_is_counted(repre_log, monkeypatch):
    """A JPEG whose header passed the worker's check but whose data no decoder reads: grey of the promised size,
    counted as skipped, its file named once per process; the rest of the batch is decoded."""

    good = _jpeg(np.full((8, 10, 3), 200, dtype=np.uint8))
    bad = _undecodable(good)
    assert jpeg_shape(bad) == (8, 10)
    payloads = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in (good, bad)]
    batch = {"pixels": torch.empty(0, dtype=torch.uint8), "jpeg": torch.cat(payloads),
             "encoded": torch.tensor([True, True]), "shapes": torch.tensor([[8, 10], [8, 10]]),
             "offsets": torch.tensor([0, len(good)]), "lengths": torch.tensor([len(good), len(bad)]),
             "index": torch.tensor([3, 7])}
    for _ in range(2):  # two epochs
        images, bad_count = unpack(batch, torch.device("cpu"), name_of=lambda i: f"/data/photos/{i}.jpg")
        assert bad_count == 1 and (images[1] == 128).all()
        assert (images[0].float().mean() - 200).abs() < 3
    said = [m for m in repre_log.messages if "grey in its place" in m]
    assert len(said) == 1 and "/data/photos/7.jpg" in said[0], said


def test_a_run_with_crops_and_decoding_on_the_device(mixed_folder, tmp_path, loader_batches):
    """The trainer finishes packed batches: the loader's hold whole images (JPEG bytes among them) and each
    view's box, no views; a run completes with the same step count and counts."""
    code, out = run_cli(pretrain_args(tmp_path / "run", "data.name=folder", f"data.root={mixed_folder}",
                                      "data.image_size=16", "train.batch_size=8", "train.max_steps=3",
                                      "eval.knn.enabled=false", "data.device_stages=decode"))
    summary = last_json(out)
    assert code == 0 and summary["completed"] and summary["skipped_images"] == 0 and summary["upscaled_images"] > 0
    assert len(loader_batches) == 3 and not any("views" in b for b in loader_batches), loader_batches
    assert all({"pixels", "jpeg", "encoded", "boxes", "flips"} <= b.keys() for b in loader_batches), loader_batches
    assert sum(b["jpeg"][1][0] for b in loader_batches) > 0  # JPEG bytes cross undecoded


def test_a_jpeg_found_undecodable_on_the_device_is_counted_in_the_summary(mixed_folder, tmp_path, loader_batches):
    """The count of images the device could not decode reaches the run's summary: one epoch of 16 images, one
    of them a JPEG with a valid header and garbled data. The finished batch carries it; the loader's batch is
    left as it was (a second finish counts nothing twice)."""
    path = mixed_folder / "train" / "a" / "1.jpg"
    path.write_bytes(_undecodable(path.read_bytes()))
    cfg = tiny_config("data.name=folder", f"data.root={mixed_folder}", "data.image_size=16",
                      "data.device_stages=decode")
    source = train_source(cfg)
    spec = view_spec(cfg, source)
    ds = ViewDataset(source, spec, 0, crops_on_device=True, decode_on_device=True)
    packed = ViewCollate(spec, photometric=False)([ds[(0, i)] for i in range(len(source))])
    done = finish_views(dict(packed), spec)
    assert (int(packed["skipped"]), int(done["skipped"])) == (0, 1)
    again = finish_views(done, spec)
    assert int(again["skipped"]) == 1 and torch.equal(again["views"], done["views"])
    code, out = run_cli(pretrain_args(tmp_path / "run", "data.name=folder", f"data.root={mixed_folder}",
                                      "data.image_size=16", "train.batch_size=8", "train.max_steps=2",
                                      "eval.knn.enabled=false", "data.device_stages=decode"))
    summary = last_json(out)
    assert code == 0 and summary["completed"] and summary["skipped_images"] == 1
    # counted on the device: the loader's batches held the JPEG bytes, no views
    assert len(loader_batches) == 2 and all("jpeg" in b and "views" not in b for b in loader_batches), loader_batches


@pytest.mark.parametrize("value,on_cpu,on_gpu", [
    ("auto", (False, False, False), (True, False, False)),
    ("workers", (False, False, False), (False, False, False)),
    ("photometric", (True, False, False), (True, False, False)),
    ("crops", (True, True, False), (True, True, False)),
    ("decode", (True, True, True), (True, True, True)),
])
def test_each_device_stage_adds_one_to_the_one_before(value, on_cpu, on_gpu):
    """data.device_stages: (photometric, crops, decode) on the device, on a CPU and on a GPU."""
    cfg = tiny_config(f"data.device_stages={value}")
    for device, expected in ((torch.device("cpu"), on_cpu), (CUDA, on_gpu)):
        stages = Stages.of(cfg, device)
        assert (stages.photometric_on_device, stages.crops_on_device, stages.decode_on_device) == expected


@pytest.mark.parametrize("old,new", [
    ({"aug": {"photometric_on": "auto", "geometric_on": "workers"}, "data": {"decode_on": "workers"}}, "auto"),
    ({"aug": {"photometric_on": "workers", "geometric_on": "workers"}, "data": {"decode_on": "workers"}}, "workers"),
    ({"aug": {"photometric_on": "device", "geometric_on": "workers"}, "data": {"decode_on": "workers"}}, "photometric"),
    ({"aug": {"photometric_on": "auto", "geometric_on": "device"}, "data": {"decode_on": "workers"}}, "crops"),
    ({"aug": {"photometric_on": "auto", "geometric_on": "device"}, "data": {"decode_on": "device"}}, "decode"),
    ({"aug": {"photometric_on": "auto"}, "data": {"decode_on": "workers", "device_stages": "crops"}}, "crops"),
])
def test_the_three_placement_keys_of_older_configs_read_as_one(old, new):
    """A run's config with aug.photometric_on, aug.geometric_on and data.decode_on reads as the
    data.device_stages that places the same stages; a person who writes one of them is told the new key."""
    from repre.config import config_from_dict, migrate

    raw = tiny_config().to_dict()
    raw["data"].pop("device_stages")  # a config of before the key; the last case: edited to have both
    for section, keys in old.items():
        raw[section].update(keys)
    assert config_from_dict(migrate(raw)).data.device_stages == new
    with pytest.raises(UserError, match="data.device_stages"):
        tiny_config("aug.geometric_on=device")


def test_fashion_mnist_crops_on_the_device_match_the_loader():
    """A source without files (Fashion-MNIST here) sends pixels; the loader's batches match the worker path."""
    cfg = tiny_config()
    source = train_source(cfg)
    workers = next(iter(pretrain_loader(cfg, source, 0, False, Stages.of(cfg, CUDA))))
    device = tiny_config("data.device_stages=crops")
    packed = next(iter(pretrain_loader(device, source, 0, False, Stages.of(device, CUDA))))
    assert not packed["encoded"].any() and "views" not in packed
    cut = crop_on_device(dict(packed), cfg.data.image_size, cfg.data.local_size)
    assert (cut["views"].int() - workers["views"].int()).abs().max() <= 1


def test_shard_jpegs_travel_as_their_bytes(tmp_path):
    """data.name=shards with device_stages=decode: a JPEG member crosses as the member's bytes, decoded to the pixels
    the worker path decodes."""
    import tarfile

    from repre.data.pipeline import load_payload
    from repre.data.shards import TarShards

    data = _jpeg(np.random.default_rng(0).integers(0, 256, (14, 22, 3), dtype=np.uint8))
    (tmp_path / "s").mkdir()
    with tarfile.open(tmp_path / "s" / "a.tar", "w") as tar:
        info = tarfile.TarInfo("k0.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    source = TarShards(str(tmp_path / "s"))
    sample, skipped = load_payload(source, 0, encoded_ok=True)
    assert sample["encoded"] and sample["shape"] == (14, 22) and sample["payload"].numpy().tobytes() == data
    batch = ViewCollate(None, photometric=False)  # only its packing is used
    packed = batch([{**sample, "index": 0, "skipped": skipped, "upscaled": 0}])
    images, bad = unpack(packed, torch.device("cpu"))
    assert bad == 0 and torch.equal(images[0], source.load(0)[0])


def test_a_subset_of_a_folder_still_sends_its_jpegs_as_bytes(mixed_folder):
    """data.subset (or the validation hold-out) over a folder: its images still cross undecoded to a device that
    decodes JPEGs, and keep their class names."""
    from repre.data.labels import class_names
    from repre.data.pipeline import load_payload

    source = build_source(tiny_config("data.name=folder", f"data.root={mixed_folder}").data, "train")
    picked = subset_of(subset_of(source, 12), 6)  # a selection of a selection, as an evaluation's subset
    jpeg = next(i for i in range(len(picked)) if picked.path(i).endswith(".jpg"))
    sample, _ = load_payload(picked, jpeg, encoded_ok=True)
    assert sample["encoded"] and sample["payload"].numpy().tobytes() == Path(picked.path(jpeg)).read_bytes()
    assert class_names(picked) == ["a", "b"]
    generated = subset_of(build_source(tiny_config().data, "train"), 4)  # no files: pixels, as before
    assert not load_payload(generated, 0, encoded_ok=True)[0]["encoded"]


def test_a_huge_image_crosses_downscaled_with_its_boxes_scaled(monkeypatch):
    """Over MAX_PIXELS an image is downscaled in the worker (a chunk must hold it) and its JPEG is not sent as
    bytes; the views are drawn on the full size, so they show the same regions as the worker path's."""
    from repre.config import AugConfig
    from repre.data.views import ViewSpec

    monkeypatch.setattr(device_views, "MAX_PIXELS", 60 * 40)
    yy, xx = torch.meshgrid(torch.arange(120), torch.arange(80), indexing="ij")
    img = torch.stack([yy * 2, xx * 3, (yy + xx)]).clamp(0, 255).to(torch.uint8)  # smooth: resampling commutes
    assert jpeg_shape(_jpeg(img.permute(1, 2, 0).numpy())) is None
    spec = ViewSpec(AugConfig(), 24, (0.5,) * 3, (0.25,) * 3)
    device = ViewDataset(None, spec, 0, crops_on_device=True)
    loaded = device_views.pixels_payload(img, 3)
    assert loaded["shape"] == (60, 40) and loaded["drawn"] == (120, 80)
    sample = device.sample(loaded, 0, 5)
    assert "drawn" not in sample and sample["upscaled"] == 0
    boxes = sample["boxes"]
    assert (boxes[:, 0] + boxes[:, 2] <= 60).all() and (boxes[:, 1] + boxes[:, 3] <= 40).all()
    assert (boxes[:, 2:] > 0).all()
    cut = crop_sets([loaded["payload"].view(3, 60, 40)], [(boxes[None], sample["flips"][None], 24)])[0][0]
    workers = ViewDataset(None, spec, 0).sample({"image": img, "label": 3}, 0, 5)["views"]
    assert (cut.float() - workers.float()).abs().mean() < 3


def test_a_streamed_jpeg_the_device_cannot_decode_is_named_by_its_shard(tmp_path, repre_log):
    """Streamed shards' batches carry each image's views key (shard << 24 | position), not an index a source
    reads: the warning named "the image at dataset index 16777219"."""
    import tarfile
    from itertools import islice

    from conftest import add
    from repre.data.pipeline import PretrainData
    from repre.data.stream import StreamViews

    good = _jpeg(np.full((20, 20, 3), 90, np.uint8))
    for shard in range(2):
        with tarfile.open(tmp_path / f"s-{shard}.tar", "w") as tar:
            for i in range(4):
                add(tar, f"k{i}.jpg", _undecodable(good) if (shard, i) == (1, 2) else good)
    cfg = tiny_config("data.name=shards", f"data.root={tmp_path}/s-{{0..1}}.tar", "data.shard_access=stream",
                      "data.image_size=16", "data.device_stages=decode", "data.shuffle_block=1")
    data = PretrainData(cfg, torch.device("cpu"))
    views = ViewDataset(data.source, data.spec, 0, crops_on_device=True, decode_on_device=True)
    samples = list(islice(StreamViews(data.source, views, 0, 1, 0, 1), 8))
    done = data.finish(ViewCollate(data.spec, photometric=False)(samples))
    said = [m for m in repre_log.messages if "grey in its place" in m]
    assert int(done["skipped"]) == 1 and len(said) == 1, said
    assert f"{tmp_path}/s-1.tar, sample 2 (from 0)" in said[0] and "dataset index" not in said[0]
