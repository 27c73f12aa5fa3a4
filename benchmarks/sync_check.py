"""Host synchronisations inside the training step on a GPU: CUDA's sync debug mode reports every operation that
makes the host wait for the device (a blocking copy, .item(), a data-dependent shape). With train.host_sync=log
the step should have none: the host then runs ahead and queues the next step while the GPU works.

For each configuration: two warm-up steps, then `--steps` steps under torch.cuda.set_sync_debug_mode("warn");
every reported synchronisation is attributed to the innermost frame in repre's source (file:line), counted.

    PYTHONPATH=src python benchmarks/sync_check.py [--steps 3] [--jpegs DIR]

`--jpegs DIR` (a folder of JPEGs, e.g. from make_jpegs.py) adds the configurations that read files: crops and
decoding on the device. Prints a JSON line last ({"benchmark": "sync_check", "results": {config: {where: n}}}).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

import repre
from repre.config import load_config
from repre.engine.trainer import Trainer

SYN = ["data.name=synthetic", "data.synthetic_train=256", "train.num_workers=2", "train.progress=false",
       "eval.knn.enabled=false", "train.diagnose_every=0", "train.device=cuda", "train.host_sync=log",
       "train.batch_size=32", "data.image_size=64",  # the model's img_size follows data.image_size
       "train.compile=false"]  # eager: compiled kernels add no host waits, and compiling would take most of the time
CONFIGS = {
    "mocov3-repre": ("in1k-vit-s16-mocov3-repre", []),
    "dino-repre": ("in1k-vit-s16-dino-repre", ["data.local_size=32"]),
    "moby-repre": ("in1k-swin-t-moby-repre", ["data.image_size=224", "train.batch_size=16"]),
    "mocov3-repre-geometric-on-device": ("in1k-vit-s16-mocov3-repre", ["data.device_stages=crops"]),
}


PACKAGE = str(Path(repre.__file__).resolve().parent)


def repre_frame(stack: list[traceback.FrameSummary]) -> str:
    """The innermost frame in repre's source: where the synchronising call was made."""
    for frame in reversed(stack):
        if str(Path(frame.filename).resolve()).startswith(PACKAGE):
            return f"repre{frame.filename[len(PACKAGE):]}:{frame.lineno} {frame.line}"
    return "outside repre"


def set_mode(mode: str) -> None:
    if torch.cuda.is_available():  # a CPU dry run of this script counts nothing
        torch.cuda.set_sync_debug_mode(mode)


def check(preset: str, overrides: list[str], steps: int) -> dict[str, int]:
    trainer = Trainer(load_config(preset, overrides), Path(tempfile.mkdtemp()) / "run")
    loader = iter(trainer.data.loader(0, trainer.rt.pin_memory))  # as the run's own loop makes it
    trainer.model.train()
    found: Counter[str] = Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            found[repre_frame(traceback.extract_stack()[:-1])] += 1

    for i in range(2 + steps):
        batch = next(loader)
        if i == 2:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            set_mode("warn")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            try:
                with trainer.settings():  # what fit() sets around every step
                    trainer.train_step(trainer.data.to_device(batch))
            finally:
                if i == 1 + steps:
                    set_mode("default")
        trainer.state.step += 1
    return dict(found)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--jpegs", help="a folder of JPEGs: adds crops and decoding on the device from files")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a dry run of this script
    args = p.parse_args()
    base = [*SYN, f"train.device={args.device}"]
    configs = dict(CONFIGS)
    if args.jpegs:
        files = ["data.name=folder", f"data.root={args.jpegs}"]
        configs["mocov3-repre-folder-geometric-on-device"] = ("in1k-vit-s16-mocov3-repre",
                                                              files + ["data.device_stages=crops"])
        configs["mocov3-repre-folder-decode-on-device"] = ("in1k-vit-s16-mocov3-repre",
                                                           files + ["data.device_stages=decode"])
    results = {}
    for name, (preset, extra) in configs.items():
        start = time.perf_counter()
        try:
            results[name] = check(preset, base + extra, args.steps)
        except Exception as exc:  # noqa: BLE001 - one configuration's failure is reported, the others still run
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        total = sum(v for v in results[name].values() if isinstance(v, int))
        print(f"{name:<44} {total:3d} synchronisations in {args.steps} steps ({time.perf_counter() - start:.0f} s)")
        for where, n in results[name].items():
            print(f"    {n} x {where}")
    print(json.dumps({"benchmark": "sync_check", "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
                      "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
                      "results": results}))


if __name__ == "__main__":
    main()
