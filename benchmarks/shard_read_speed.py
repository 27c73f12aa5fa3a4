"""How fast one data worker reads tar shards, without decoding: streamed (`repre.data.stream.read_samples`, from
the file and through a `pipe:cat` command) against random access through the index (`TarShards.read`, in index
order), on shards of ImageNet-sized JPEGs written by make_jpegs.py (just written: from the page cache, so this
is the readers' CPU cost, not a disk's or a network's); interleaved rounds, medians. Compare with the
~1 ms a worker spends decoding an image (view_speed.py): reading must not be what limits a worker.

    python benchmarks/shard_read_speed.py [--images 1024] [--shard-size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from make_jpegs import write

from repre.data.shards import TarShards
from repre.data.stream import read_samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    out = Path(tempfile.mkdtemp())
    os.environ.setdefault("REPRE_CACHE", str(out / "cache"))
    write(out, "train", args.images, 10, args.shard_size, seed=0)
    paths = sorted(str(p) for p in (out / "shards" / "train").glob("*.tar"))
    indexed = TarShards(str(out / "shards" / "train"))

    def streamed(urls: list[str]) -> int:
        return sum(len(data) for url in urls for _, data, _ in read_samples(url))

    ways = {
        "stream (file)": lambda: streamed(paths),
        "stream (pipe:cat)": lambda: streamed([f"pipe:cat {p}" for p in paths]),
        "random access (index)": lambda: sum(len(indexed.read(i)) for i in range(len(indexed))),
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    total = 0
    for _ in range(args.rounds):
        for name, fn in ways.items():
            start = time.perf_counter()
            total = fn()
            times[name].append(time.perf_counter() - start)
    rates = {k: {"images_per_sec": args.images / statistics.median(v),
                 "mb_per_sec": total / statistics.median(v) / 1e6} for k, v in times.items()}
    shutil.rmtree(out)
    for k, r in rates.items():
        print(f"{k:<24}{r['images_per_sec']:9.0f} images/s {r['mb_per_sec']:7.0f} MB/s")
    print(json.dumps({"benchmark": "shard_read_speed", "date": time.strftime("%Y-%m-%d"), "images": args.images,
                      "mean_bytes": total / args.images, "shard_size": args.shard_size, "rates": rates}))


if __name__ == "__main__":
    main()
