"""Images per second of `repre embed` beside k-NN's feature extraction of the same images.

The default preset's encoder (its weights as initialized: the speed does not depend on them), saved as a
checkpoint; each round runs `repre.embed` over the first --images training images (writing FILE.npy, its
index and card), then `extract_features` (k-NN's path: the same encoder, transform and batches, gathered in
memory) over the same images, interleaved. The table reports medians: embed's own rate (its loop, as its JSON
line reports it), the whole call (checkpoint loading included) and k-NN's, and embed's loop over k-NN's.

    python benchmarks/embed_speed.py [--images 10000] [--rounds 3] [--preset fmnist-mocov3-repre] [--set K=V]...
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from repre.builder import build_model
from repre.config import Config, load_config
from repre.core import checkpoint_io as ckpt_io
from repre.core.runtime import setup_runtime
from repre.data.evaluation import eval_loader
from repre.eval.knn import extract_features
from repre.pretrained import load_encoder
from repre.use.embed import embed


def save_checkpoint(cfg: Config, path: Path) -> Path:
    """A checkpoint of the configured model as initialized (seeded)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    ckpt_io.save({"schema": ckpt_io.SCHEMA, "model": model.state_dict(), "config": cfg.to_dict(), "step": 0,
                  "versions": ckpt_io.versions()}, path)
    return path


def knn_rate(checkpoint: Path, cfg: Config, images: int) -> float:
    """Images per second of k-NN's feature extraction over the first `images` training images."""
    encoder, _ = load_encoder(checkpoint)
    rt = setup_runtime(cfg.train)
    encoder = encoder.to(rt.device)
    loader = eval_loader(cfg, "train", images)  # opening the dataset is not timed (nor is it in embed's rate)
    start = time.perf_counter()
    feats, _ = extract_features(encoder, loader, rt)
    seconds = time.perf_counter() - start
    assert len(feats) == images
    return round(images / seconds, 1)


def embed_rates(checkpoint: Path, out: Path) -> tuple[float, float, int]:
    """(embed's own images/s, images/s of the whole call, images embedded)."""
    start = time.perf_counter()
    summary = embed(checkpoint, out, overwrite=True)
    seconds = time.perf_counter() - start
    return summary["images_per_sec"], round(summary["images"] / seconds, 1), summary["images"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10000, help="N training images (data.subset)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--preset", default="fmnist-mocov3-repre")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    cfg = load_config(args.preset, [*args.overrides, f"data.subset={args.images}", "train.progress=false"])
    rates: dict[str, list[float]] = {"embed": [], "embed (whole call)": [], "k-NN features": []}
    with tempfile.TemporaryDirectory(prefix="embed-speed-") as tmp:
        checkpoint = save_checkpoint(cfg, Path(tmp) / "init.pt")
        for _ in range(args.rounds):
            loop, call, images = embed_rates(checkpoint, Path(tmp) / "emb.npy")
            rates["embed"].append(loop)
            rates["embed (whole call)"].append(call)
            rates["k-NN features"].append(knn_rate(checkpoint, cfg, images))
    median = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    print(f"{'path':<22}{'images/s (median)':>18}   rounds")
    for k, v in median.items():
        print(f"{k:<22}{v:>18.1f}   {', '.join(f'{x:.1f}' for x in rates[k])}")
    ratio = round(median["embed"] / median["k-NN features"], 3)
    print(f"embed / k-NN features: {ratio:.3f}")
    print(json.dumps({"benchmark": "embed_speed", "date": time.strftime("%Y-%m-%d"), "preset": args.preset,
                      "arch": cfg.model.arch, "images": images, "rounds": args.rounds,
                      "device": setup_runtime(cfg.train).device.type, "threads": torch.get_num_threads(),
                      "images_per_sec": median, "per_round": rates, "embed_over_knn": ratio,
                      "versions": ckpt_io.versions()}))


if __name__ == "__main__":
    main()
