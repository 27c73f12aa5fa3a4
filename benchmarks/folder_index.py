"""A folder's index (`repre.data.folder.ImageFolder`): how long a process takes to build it and what it costs
in memory, in the process and in each forked data worker, against the index as a list of `Path` objects and
a list of labels (the layout before `PackedStrings`), built from the same scan in the same run.

    python benchmarks/folder_index.py [--files 200000] [--classes 1000] [--root FOLDER]

Without --root, a folder of --files empty .JPEG files in --classes class folders is made in a temporary
directory (the index reads names only). A forked worker reads every image's path once (an epoch of a data
worker), and reports the memory it no longer shares with its parent (Private_Dirty of /proc/self/smaps_rollup).
Prints a JSON line last; the memory is also given per 1,281,167 files (ImageNet's train split).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from repre.data.folder import ImageFolder, _scan

IMAGENET_TRAIN = 1_281_167


class PathList:
    """The former index: a `Path` a file and a label a file, in lists (what `ImageFolder` held)."""

    def __init__(self, root: Path) -> None:
        names, tops, _ = _scan(root)
        self.files = [root / name for name in names]
        parents = sorted({p.relative_to(root).parts[0] for p in self.files if len(p.relative_to(root).parts) > 1})
        index = {c: i for i, c in enumerate(parents)}
        self.labels = [index[p.relative_to(root).parts[0]] for p in self.files]

    def path(self, i: int) -> str:
        return str(self.files[i])


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def private_dirty_mib() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def worker(index) -> float:
    """An epoch of a data worker over the index: every path read once, in a random order -> the MiB it copied."""
    before = private_dirty_mib()
    for i in np.random.default_rng(0).permutation(len(index.labels)):
        index.path(int(i))
        int(index.labels[i])
    return private_dirty_mib() - before


def measure(kind: str, root: Path) -> dict[str, float]:
    before = rss_mib()
    start = time.perf_counter()
    index = ImageFolder(root) if kind == "packed" else PathList(root)
    seconds = time.perf_counter() - start
    held = rss_mib() - before
    copied = in_child(worker, index)
    files = len(index.labels)
    return {"files": files, "index_s": round(seconds, 2), "process_mib": round(held, 1),
            "worker_copied_mib": round(copied, 1),
            "per_imagenet": {"index_s": round(seconds * IMAGENET_TRAIN / files, 1),
                             "process_mib": round(held * IMAGENET_TRAIN / files),
                             "worker_copied_mib": round(copied * IMAGENET_TRAIN / files)}}


def in_child(fn, *args):
    """fn(*args) in a forked process of its own: each index is measured from the same start, not in a process
    whose allocator keeps the memory another index freed."""
    results = mp.get_context("fork").Queue()
    proc = mp.get_context("fork").Process(target=lambda: results.put(fn(*args)))
    proc.start()
    value = results.get()
    proc.join()
    return value


def make_folder(root: Path, files: int, classes: int) -> None:
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(c, files, classes):
            (folder / f"n{c:08d}_{i}.JPEG").touch()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--root", type=Path, help="an existing folder of images (default: a generated one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "train"
        if args.root is None:
            make_folder(root, args.files, args.classes)
        rows = {kind: in_child(measure, kind, root) for kind in ("paths", "packed")}
    for kind, row in rows.items():
        print(f"{kind:<8}{row}")
    print(json.dumps({"benchmark": "folder_index", "rows": rows, "machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
