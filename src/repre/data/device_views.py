"""The geometric stage, and JPEG decoding, on the training device: `data.device_stages=crops` and `decode`.

Why: decoding, cropping and the photometric stage cost a data worker milliseconds per image at 224 px, so a
fast GPU needs many cores of data workers (docs/results.md, "Input pipeline"); with the photometric stage on the
device (the GPU default) decoding is nearly all that remains. Here the workers only read files and draw each
view's parameters (the same draws, from the same (seed, epoch, index, view) generators, as the worker path:
`repre.data.views.sample_views`); a batch crosses to the device as whole images (decoded pixels, or the JPEG
bytes themselves with `data.device_stages=decode`) with the crop boxes, flips and photometric parameters beside
them. On the device:

- JPEGs are decoded in one batched call (nvJPEG on a GPU); one the device refuses is decoded on the CPU;
- every view's random resized crop and flip is two matrix products, view = Ry · image · Rxᵀ, where Ry [S, H] and
  Rx [S, W] hold the antialiased bilinear weights of the crop's rows and columns (the triangle filter widened by
  the downscale factor, with the weights torchvision's and PIL's antialias=True compute; a flip reverses Rx's
  rows). The images are sorted by size and padded in chunks to a common size; the padding has zero weight.

The views equal torchvision's float `resized_crop` up to float rounding, and the worker path's uint8 ones within
one grey level (that path rounds between its horizontal and vertical passes; an image over `MAX_PIXELS`, which
crosses downscaled, within a few). The photometric stage follows
(`repre.data.views.photometric`).
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from repre.data.folder import ImageReadMode, UnreadableImage, complete_jpeg, decode, decode_jpeg, warn_unreadable

log = logging.getLogger("repre")

CHUNK_ELEMENTS = 1 << 26  # padded images plus intermediate products per chunk, in float32 elements (256 MiB)
MAX_PIXELS = 4096 * 4096  # a larger image is downscaled in its worker before it crosses (one must fit a chunk)
EXIF_ORIENTATION = 0x0112


def jpeg_shape(data: bytes) -> tuple[int, int] | None:
    """(H, W) of a JPEG the device decoder takes as it is: complete, RGB or grayscale, without an EXIF rotation
    (nvJPEG ignores EXIF), of at most MAX_PIXELS; None for anything else, which the worker decodes instead."""
    if not complete_jpeg(data):
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            if img.getexif().get(EXIF_ORIENTATION, 1) != 1 or img.height * img.width > MAX_PIXELS:
                return None
            return img.height, img.width
    except Exception:  # noqa: BLE001 - a header PIL cannot parse: the worker's decoder reports it
        return None


# ---------------------------------------------------------------- packing, in the data workers


def pixels_payload(img: torch.Tensor, label: int) -> dict:
    """Decoded pixels (uint8 [3, H, W]) as they cross to the device: {"payload" [3*H'*W'], "encoded": False,
    "shape": (H', W'), "drawn": (H, W), "label"}. An image over MAX_PIXELS is downscaled here (antialiased) to fit;
    its views are still drawn on its full size ("drawn") and their boxes scaled to it (`scale_boxes`)."""
    h, w = img.shape[-2:]
    if h * w > MAX_PIXELS:
        f = math.sqrt(MAX_PIXELS / (h * w))
        img = TF.resize(img, [max(1, int(h * f)), max(1, int(w * f))], antialias=True)
    return {"payload": img.reshape(-1), "encoded": False, "shape": tuple(img.shape[-2:]), "drawn": (h, w),
            "label": label}


def scale_boxes(boxes: torch.Tensor, drawn: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Crop boxes [V, 4] (top, left, h, w) drawn on an image of size `drawn` -> the same boxes on its downscaled
    copy of size `shape` (each at least one pixel, inside the image)."""
    if tuple(drawn) == tuple(shape):
        return boxes
    (dh, dw), (h, w) = drawn, shape
    bh = (boxes[:, 2] * h / dh).round().long().clamp(1, h)
    bw = (boxes[:, 3] * w / dw).round().long().clamp(1, w)
    top = torch.minimum((boxes[:, 0] * h / dh).floor().long(), h - bh)
    left = torch.minimum((boxes[:, 1] * w / dw).floor().long(), w - bw)
    return torch.stack([top, left, bh, bw], dim=1)


def pack(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Samples holding a "payload" (uint8 [3*H*W] pixels, or [n] JPEG bytes when "encoded") and a "shape" (H, W)
    -> one buffer of pixels and one of JPEG bytes (a single copy each to the device), with per-sample
    "encoded" [B] bool, "shapes" [B, 2], "offsets" and "lengths" [B] into the sample's buffer."""
    encoded = torch.tensor([s["encoded"] for s in samples])
    offsets, lengths, used = [], [], [0, 0]
    for s in samples:
        kind = int(s["encoded"])
        offsets.append(used[kind])
        lengths.append(s["payload"].numel())
        used[kind] += s["payload"].numel()
    empty = torch.empty(0, dtype=torch.uint8)
    return {
        "pixels": torch.cat([s["payload"] for s in samples if not s["encoded"]] or [empty]),
        "jpeg": torch.cat([s["payload"] for s in samples if s["encoded"]] or [empty]),
        "encoded": encoded,
        "shapes": torch.tensor([s["shape"] for s in samples], dtype=torch.int64),
        "offsets": torch.tensor(offsets, dtype=torch.int64),
        "lengths": torch.tensor(lengths, dtype=torch.int64),
    }


# ---------------------------------------------------------------- unpacking and decoding, on the device


def decode_jpegs(data: list[torch.Tensor], device: torch.device, names: list[str] | None = None
                 ) -> list[torch.Tensor | None]:
    """JPEG bytes (CPU uint8 [n] each) -> RGB uint8 [3, H, W] on `device`, in one batched call; where the batch
    fails, image by image, and an image the device cannot decode is decoded by the CPU path (None: unreadable;
    `names` say which in the warning).

    On a GPU the caller's stream is drained first: nvJPEG's hardware decoder writes its outputs without waiting
    for the work queued on that stream, into memory the caching allocator may just have freed from it (silent
    corruption; pytorch/vision#9606). The decode waits for the device anyway (it returns decoded pixels), so the
    wait only moves earlier; data.device_stages=decode is therefore not free of host synchronisation."""
    names = names or [f"JPEG {i}" for i in range(len(data))]
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        out: list[torch.Tensor | None] = []
        for d, name in zip(data, names, strict=True):
            try:
                out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                try:
                    img = decode(io.BytesIO(d.numpy().tobytes()), name)
                    out.append(img.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else img)
                except UnreadableImage as exc:  # its text names the file: said once per process
                    warn_unreadable(str(exc), "could not decode on the device or the CPU (mid-grey in its place)")
                    out.append(None)
    return out


def unpack(batch: dict[str, torch.Tensor], device: torch.device, name_of: Callable[[int], str] | None = None
           ) -> tuple[list[torch.Tensor], int]:
    """A packed batch ("pixels" already on `device`, "jpeg" on the CPU) -> (its images, uint8 [3, H, W] each on
    `device`, in batch order; the number that could not be decoded, replaced by mid-grey). `name_of(index)`: the
    file at a dataset index, for messages."""
    shapes, offsets, lengths = batch["shapes"].tolist(), batch["offsets"].tolist(), batch["lengths"].tolist()
    encoded = batch["encoded"].tolist()
    images: list[torch.Tensor | None] = [None] * len(shapes)
    jpegs = [i for i, e in enumerate(encoded) if e]
    for i, e in enumerate(encoded):
        if not e:
            images[i] = batch["pixels"][offsets[i]: offsets[i] + lengths[i]].view(3, *shapes[i])
    if jpegs:
        data = [batch["jpeg"][offsets[i]: offsets[i] + lengths[i]] for i in jpegs]
        name_of = name_of or (lambda index: f"the image at dataset index {index}")
        names = [name_of(int(batch["index"][i])) if "index" in batch else f"JPEG {i}" for i in jpegs]
        for i, img in zip(jpegs, decode_jpegs(data, device, names), strict=True):
            images[i] = img
    out: list[torch.Tensor] = []
    bad = 0
    for img, shape in zip(images, shapes, strict=True):
        if img is None or tuple(img.shape[-2:]) != tuple(shape):
            # the header promised another size, or nothing decoded: a grey image of the promised size
            img = torch.full((3, *shape), 128, dtype=torch.uint8, device=device)
            bad += 1
        out.append(img)
    return out, bad


# ---------------------------------------------------------------- resized crops as matrix products


def resample_weights(start: torch.Tensor, length: torch.Tensor, full: int, out: int) -> torch.Tensor:
    """Antialiased bilinear resampling of [start, start + length) of an axis of `full` pixels to `out` pixels:
    start, length [M] -> weights [M, out, full] (rows sum to 1; zero outside the crop).

    Output pixel i is centred at start + scale * (i + 0.5), scale = length / out; input pixel j weighs
    max(0, 1 - |j + 0.5 - centre| / max(scale, 1)) (the triangle filter, widened when downscaling)."""
    dev = start.device
    start = start.float()[:, None, None]
    length = length.float()[:, None, None]
    scale = length / out
    i = torch.arange(out, dtype=torch.float32, device=dev)[None, :, None]
    j = torch.arange(full, dtype=torch.float32, device=dev)[None, None, :]
    x = (j + 0.5 - start - scale * (i + 0.5)) / scale.clamp(min=1.0)
    w = (1 - x.abs()).clamp(min=0) * ((j >= start) & (j < start + length))
    return w / w.sum(-1, keepdim=True)


CropSet = tuple[torch.Tensor, torch.Tensor, int]  # boxes [B, V, 4] (top, left, h, w), flips [B, V], output size


def _chunks(shapes: list[tuple[int, int]], order: list[int], sets: list[tuple[int, int]]) -> list[list[int]]:
    """Consecutive runs of `order` (images sorted by size) whose padded chunk stays within CHUNK_ELEMENTS;
    `sets`: (views per image, output size) of each set of crops cut from it."""
    chunks: list[list[int]] = []
    current: list[int] = []
    hmax = wmax = 0
    for i in order:
        h, w = max(hmax, shapes[i][0]), max(wmax, shapes[i][1])
        n = len(current) + 1
        cost = n * (3 * h * w + sum(v * 3 * s * (w + s) for v, s in sets))  # padded images, row products, views
        if current and cost > CHUNK_ELEMENTS:
            chunks.append(current)
            current, h, w = [], shapes[i][0], shapes[i][1]
        current.append(i)
        hmax, wmax = h, w
    return chunks + [current] if current else chunks


@contextmanager
def _tensor_cores(device: torch.device) -> Iterator[None]:
    """TF32 for the crops' float32 products on a GPU (8x the float32 rate): inputs keep 10 mantissa bits, so a
    view is off by at most ~0.4 grey level before rounding to uint8 (pixels <= 255, weights summing to 1)."""
    if device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def crop_sets(images: list[torch.Tensor], sets: list[CropSet]) -> list[torch.Tensor]:
    """Images (uint8 [3, H_i, W_i] on one device) and sets of crops of them, each (boxes [B, V, 4] as (top, left,
    h, w), flips [B, V], size): per set, views uint8 [B, V, 3, size, size], each box resized with antialiasing,
    then flipped where asked. Several sets (DINO's global and local crops) share the padding of each chunk of
    images."""
    device = images[0].device
    with _tensor_cores(device):
        return _crop_sets(images, sets, device)


def _crop_sets(images: list[torch.Tensor], sets: list[CropSet], device: torch.device) -> list[torch.Tensor]:
    sets = [(boxes.to(device, non_blocking=True), flips.to(device, non_blocking=True), s)  # no host wait
            for boxes, flips, s in sets]
    outs = [torch.empty(len(images), boxes.shape[1], 3, s, s, dtype=torch.uint8, device=device)
            for boxes, _, s in sets]
    shapes = [(img.shape[-2], img.shape[-1]) for img in images]
    order = sorted(range(len(images)), key=lambda i: shapes[i][0] * shapes[i][1])
    for chunk in _chunks(shapes, order, [(boxes.shape[1], s) for boxes, _, s in sets]):
        hmax, wmax = max(shapes[i][0] for i in chunk), max(shapes[i][1] for i in chunk)
        x = torch.zeros(len(chunk), hmax, 3, wmax, device=device)  # rows outermost: one product serves all channels
        for k, i in enumerate(chunk):
            x[k, : shapes[i][0], :, : shapes[i][1]] = images[i].permute(1, 0, 2)
        idx = torch.tensor(chunk).to(device, non_blocking=True)
        for (boxes, flips, s), out in zip(sets, outs, strict=True):
            out[idx] = _cut(x, boxes[idx], flips[idx], s)
    return outs


def _cut(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, s: int) -> torch.Tensor:
    """Padded float images x [n, H, 3, W], boxes [n, V, 4], flips [n, V] -> uint8 views [n, V, 3, s, s]."""
    n, hmax, _, wmax = x.shape
    v = boxes.shape[1]
    box, flip = boxes.flatten(0, 1), flips.flatten()  # [n*V, 4], [n*V]
    ry = resample_weights(box[:, 0], box[:, 2], hmax, s)  # [n*V, s, H]
    rx = resample_weights(box[:, 1], box[:, 3], wmax, s)  # [n*V, s, W]
    rx = torch.where(flip[:, None, None], rx.flip(1), rx)
    rows = ry.view(n, v * s, hmax) @ x.view(n, hmax, 3 * wmax)  # [n, V*s, 3*W]: every view's rows at once
    y = rows.view(n * v, s * 3, wmax) @ rx.transpose(1, 2)  # [n*V, s*3, s]
    y = y.view(n, v, s, 3, s).permute(0, 1, 3, 2, 4)  # [n, V, 3, s, s]
    return y.round_().clamp_(0, 255).to(torch.uint8)


def crop_on_device(batch: dict[str, torch.Tensor], size: int, local_size: int,
                   name_of: Callable[[int], str] | None = None) -> dict[str, torch.Tensor]:
    """A packed batch -> the same with uint8 "views" [B, V, 3, S, S] (and "local_views" [B, L, 3, s, s]) cut on
    the device, ready for the photometric stage. Images that could not be decoded are added to "skipped" (the
    loader's count, on the CPU)."""
    device = batch["pixels"].device
    images, bad = unpack(batch, device, name_of)
    out = {k: val for k, val in batch.items() if k not in ("pixels", "jpeg", "offsets", "lengths")}
    out["skipped"] = batch["skipped"] + bad
    sets = [(batch["boxes"], batch["flips"], size)]
    if "local_boxes" in batch:
        sets.append((batch["local_boxes"], batch["local_flips"], local_size))
    out["views"], *local = crop_sets(images, sets)
    if local:
        out["local_views"] = local[0]
    return out
