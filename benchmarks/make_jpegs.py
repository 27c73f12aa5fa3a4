"""Write a labelled folder of JPEGs (train/ and val/, class sub-folders) and the same images as WebDataset
shards, for measuring the real input pipeline (decode, crop, augment) where no dataset is at hand.

Images are smooth random fields (low-frequency noise upsampled, plus a little fine noise), sized like ImageNet
photos (shorter side 300 to 500 px), JPEG quality 90: their decoding costs about what a photo's costs.

    python benchmarks/make_jpegs.py OUT [--train 2048] [--val 256] [--classes 10] [--shard-size 256]
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def image(rng: np.random.Generator) -> bytes:
    short, ratio = int(rng.integers(300, 501)), float(rng.uniform(1.0, 1.5))
    h, w = (short, int(short * ratio)) if rng.random() < 0.5 else (int(short * ratio), short)
    coarse = rng.integers(0, 256, (h // 32 + 2, w // 32 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    pixels = np.clip(smooth + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write(out: Path, split: str, count: int, classes: int, shard_size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shard_dir = out / "shards" / split
    shard_dir.mkdir(parents=True, exist_ok=True)
    tar = None
    for i in range(count):
        label, data = i % classes, image(rng)
        path = out / "folder" / split / f"class{label:03d}" / f"{split}{i:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if i % shard_size == 0:
            if tar:
                tar.close()
            tar = tarfile.open(shard_dir / f"{split}-{i // shard_size:06d}.tar", "w")
        for name, payload in ((f"{split}{i:07d}.jpg", data), (f"{split}{i:07d}.cls", str(label).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    if tar:
        tar.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=2048)
    p.add_argument("--val", type=int, default=256)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--shard-size", type=int, default=256)
    args = p.parse_args()
    write(args.out, "train", args.train, args.classes, args.shard_size, seed=0)
    write(args.out, "val", args.val, args.classes, args.shard_size, seed=1)
    print(f"{args.out}/folder (data.name=folder) and {args.out}/shards (data.name=shards): "
          f"{args.train} train and {args.val} val JPEGs")


if __name__ == "__main__":
    main()
