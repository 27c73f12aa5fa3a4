"""What the views of one image cost where they are made: in a data worker (decode, two resized crops per image,
the photometric stage of the batch; one CPU thread) against on the device (`repre.data.device_views`: the crops of a whole batch as matrix
products, from decoded pixels, and from JPEG bytes decoded there: nvJPEG on a GPU), then the photometric stage
on the device. ImageNet-sized JPEGs from make_jpegs.py; interleaved rounds, medians.

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
from repre.data.device_views import crop_on_device, pack
from repre.data.folder import decode
from repre.data.loader import batched_photometric
from repre.data.views import ViewSpec, make_views, sample_views


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
    decoded = [decode(io.BytesIO(b)) for b in blobs]

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

    def sample(i: int, encoded: bool) -> dict:
        img = decoded[i]
        payload = torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) if encoded else img.reshape(-1)
        s = {"payload": payload, "encoded": encoded, "shape": tuple(img.shape[-2:])}
        s["boxes"], s["flips"], s["photo"] = sample_views(spec, 0, 0, i, *img.shape[-2:])
        if spec.local_crops:
            s["local_boxes"], s["local_flips"], s["local_photo"] = sample_views(
                spec, 0, 0, i, *img.shape[-2:], n_views=spec.local_crops, first=2)
        return s

    def packed(encoded: bool) -> list[dict]:
        out = []
        for start in range(0, args.images, args.batch):
            samples = [sample(i, encoded) for i in range(start, min(start + args.batch, args.images))]
            batch = pack(samples)
            for key in ("boxes", "flips", "photo", "local_boxes", "local_flips", "local_photo"):
                if key in samples[0]:
                    batch[key] = torch.stack([s[key] for s in samples])
            batch["skipped"] = torch.tensor(0)
            batch["pixels"] = batch["pixels"].to(device)
            out.append(batch)
        return out

    batches = {"device crops (pixels in)": packed(False), "device decode + crops (JPEG in)": packed(True)}

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
    workers = {"worker: decode, crops, photometric": True, "worker: decode, crops": False}  # 1 thread
    times: dict[str, list[float]] = {k: [] for k in workers} | {k: [] for k in batches}
    for _ in range(args.rounds):
        for name, photometric in workers.items():
            start = time.perf_counter()
            for b in range(0, args.images, args.batch):
                worker(b, min(b + args.batch, args.images), photometric)
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
        print(f"{k:<38}{v:8.3f} ms/image")
    print(json.dumps({"benchmark": "view_speed", "date": time.strftime("%Y-%m-%d"), "device": str(device),
                      "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                      "images": args.images, "batch": args.batch, "size": args.size,
                      "local_crops": args.local_crops, "ms_per_image": ms}))


if __name__ == "__main__":
    main()
