"""What the views of one image cost where they are made: in a data worker (decode, two resized crops per image,
the photometric stage of the batch; one CPU thread) against on the device (`repre.data.device_views`: the
crops of a whole batch as matrix products, from decoded pixels, and from JPEG bytes decoded there: nvJPEG on
a GPU), then the photometric stage on the device. ImageNet-sized JPEGs from make_jpegs.py; interleaved rounds, medians.

A worker's ms/image divided by the number of workers is the CPU pipeline's bound; the device's ms/image is time
the GPU spends beside the training step (compare it with the step's ms/image from throughput.py).

    python benchmarks/view_speed.py [--device cpu|cuda] [--images 256] [--batch 128] [--size 224]
                                    [--local-crops 0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
import torch
from make_jpegs import image

from repre.config import AugConfig
from repre.data.device_views import crop_on_device
from repre.data.folder import decode
from repre.data.pipeline import ViewCollate, ViewDataset, batched_photometric
from repre.data.views import ViewSpec, make_views


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--local-crops", type=int, default=0, help="DINO's local crops per image (at 96 px)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)  # the worker path: one data worker's thread
    spec = ViewSpec(AugConfig(), args.size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                    local_crops=args.local_crops, local_size=96)
    rng = np.random.default_rng(0)
    blobs = [image(rng) for _ in range(args.images)]

    def worker(start: int, end: int, photometric: bool = True) -> None:
        """What a data worker does for a batch: decode and crop each image, then (unless the photometric stage runs
        on the device, the GPU default) the batched photometric stage."""
        views, photos, local, local_photos = [], [], [], []
        for i in range(start, end):
            img = decode(io.BytesIO(blobs[i]))
            v, ph = make_views(img, spec, 0, 0, i)
            views.append(v)
            photos.append(ph)
            if spec.local_crops:
                v, ph = make_views(img, spec, 0, 0, i, spec.local_crops, first=2, size=96)
                local.append(v)
                local_photos.append(ph)
        if photometric:
            batched_photometric(torch.stack(views), torch.stack(photos), spec)
            if spec.local_crops:
                batched_photometric(torch.stack(local), torch.stack(local_photos), spec)

    def worker_packing(start: int, end: int, decode_on_device: bool) -> dict:
        """What a data worker does for a batch with the crops on the device: decode (or, with data.device_stages=decode,
        read the JPEG header only), draw the views' parameters, pack."""
        ds = ViewDataset(None, spec, 0, crops_on_device=True, decode_on_device=decode_on_device)
        samples = [ds.sample(ds.load_bytes(blobs[i], f"image {i}", 0), 0, i) for i in range(start, end)]
        return ViewCollate(spec, photometric=False)(samples)

    def packed(decode_on_device: bool) -> list[dict]:
        out = []
        for start in range(0, args.images, args.batch):
            batch = worker_packing(start, min(start + args.batch, args.images), decode_on_device)
            batch["pixels"] = batch["pixels"].to(device)
            out.append(batch)
        return out

    batches = {"device: crops (pixels in), photometric": packed(False),
               "device: decode, crops, photometric": packed(True)}

    def on_device(batch: dict) -> None:
        cut = crop_on_device(dict(batch), spec.size, 96)
        batched_photometric(cut["views"], cut["photo"], spec)
        if spec.local_crops:
            batched_photometric(cut["local_views"], cut["local_photo"], spec)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for b in batches.values():  # warm-up (allocator, nvJPEG handles)
        on_device(b[0])
    ranges = [(b, min(b + args.batch, args.images)) for b in range(0, args.images, args.batch)]
    workers = {  # one thread each: a data worker's work per image, for each placement of the stages
        "worker: decode, crops, photometric": lambda a, b: worker(a, b, True),
        "worker: decode, crops": lambda a, b: worker(a, b, False),
        "worker: decode, draw parameters": lambda a, b: worker_packing(a, b, False),
        "worker: read JPEG header, draw parameters": lambda a, b: worker_packing(a, b, True),
    }
    times: dict[str, list[float]] = {k: [] for k in workers} | {k: [] for k in batches}
    for _ in range(args.rounds):
        for name, fn in workers.items():
            start = time.perf_counter()
            for a, b in ranges:
                fn(a, b)
            times[name].append((time.perf_counter() - start) / args.images)
        for name, bs in batches.items():
            sync()
            start = time.perf_counter()
            for b in bs:
                on_device(b)
            sync()
            times[name].append((time.perf_counter() - start) / args.images)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    for k, v in ms.items():
        print(f"{k:<44}{v:8.3f} ms/image")
    print(json.dumps({"benchmark": "view_speed", "date": time.strftime("%Y-%m-%d"), "device": str(device),
                      "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                      "images": args.images, "batch": args.batch, "size": args.size,
                      "local_crops": args.local_crops, "ms_per_image": ms}))


if __name__ == "__main__":
    main()
