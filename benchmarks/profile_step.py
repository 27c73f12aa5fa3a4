"""Where a RePre step's time goes: the whole step profiled, and its parts timed in isolation.

    PYTHONPATH=src python benchmarks/profile_step.py [--preset in1k-vit-s16-mocov3-repre] [--set KEY=VALUE ...]
        [--steps 5] [--warmup 3] [--top 25]

Parts, each forward + backward on the same batch and timed with device synchronisation (median of --steps):
  step           the whole training step (trainer.train_step: forward, backward, clip, optimizer, EMA)
  step-baseline  the same step with the reconstruction branch disabled
  encoder        the online encoder alone (forward_features), both views
  encoder-taps   the same with the tap maps returned (forward_intermediates) and in the backward
  decoder        the decoder alone on tap maps of the step's shapes, with the reconstruction loss
  loss           the reconstruction loss alone on a prediction of the step's shape
The profiler's table (top ops by device time, or CPU time without CUDA) is printed to stderr and returned, and
where the time of each step (RePre's and the baseline's) goes by kind of kernel (benchmarks/kernel_kinds.py).
Prints a JSON line last ({"benchmark": "profile_step", ...}).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from kernel_kinds import flops_by_kind, format_bound, profiled, where_time_goes  # this folder's modules
from throughput import matmul_peak

from repre.config import load_config
from repre.data.pipeline import pretrain_loader
from repre.engine.trainer import Trainer
from repre.losses import reconstruction_loss
from repre.models.attention import training_attention

SYNTHETIC = ["data.name=synthetic", "data.synthetic_train=512", "train.num_workers=0", "train.progress=false",
             "eval.knn.enabled=false", "train.diagnose_every=0"]


def timed(fn: Callable[[], None], warmup: int, steps: int) -> float:
    """Median seconds of fn() over `steps` calls after `warmup`, synchronising the device around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


RUNS = tempfile.TemporaryDirectory(prefix="repre-profile-")  # the run's config and lock; removed at exit


def trainer_step(preset: str, overrides: list[str]) -> tuple[Trainer, Callable[[], None], dict]:
    trainer = Trainer(load_config(preset, SYNTHETIC + overrides), Path(tempfile.mkdtemp(dir=RUNS.name)) / "run")
    # pinned where a run pins (a GPU): the step's host-to-device copy as a run makes it
    batch = next(iter(pretrain_loader(trainer.cfg, trainer.data.source, 0, trainer.rt.pin_memory)))
    trainer.model.train()

    def step() -> None:
        with trainer.settings():  # what fit() sets: Dynamo's graph limit with train.compile, deterministic mode
            trainer.train_step(trainer.data.to_device(batch))
        trainer.state.step += 1

    return trainer, step, batch


def decoder_parts(trainer: Trainer, batch: dict) -> dict[str, Callable[[], None]]:
    """The encoder with and without taps, the decoder and the loss alone, on inputs of one step's shapes."""
    repre = trainer.model
    rt, cfg = trainer.rt, trainer.cfg
    views = batch["views"].to(rt.device)
    with torch.no_grad(), torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp):
        x = views.transpose(0, 1).flatten(0, 1)
        _, maps = repre.method.encoder(x, repre.branch.taps)
    maps = [m.detach().requires_grad_(True) for m in maps]
    target = x.float()

    def decoder() -> None:
        with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp):
            pred = repre.branch.reconstruct(maps, target.shape[-2:])
            loss = reconstruction_loss(pred, target, norm_pix=cfg.recon.norm_pix, patch=repre.encoder.patch_size)
        loss.backward()

    pred = torch.randn_like(target, requires_grad=True)
    encoder = repre.method.encoder

    def encode(taps: list[int]) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp):
                pooled, maps = encoder(x, taps)
                total = pooled.float().mean() + sum(m.float().mean() for m in maps)
            total.backward()
        return run

    def loss() -> None:
        with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp):
            value = reconstruction_loss(pred, target, norm_pix=cfg.recon.norm_pix, patch=repre.encoder.patch_size)
        value.backward()

    return {"encoder": encode([]), "encoder-taps": encode(repre.branch.taps), "decoder": decoder, "loss": loss}


def by_kind(step: Callable[[], None], step_s: float, device: torch.device,
            peak: float) -> tuple[dict, torch.profiler.profile]:
    """(where the time of a step that takes `step_s` goes, the profile of 2 steps it was read from);
    `kernel_kinds.where_time_goes`. `step_s` is timed with the device synchronised around each step, so on a
    GPU the launches a pipelined loop would overlap with the previous step's kernels count as no kernel running
    here (throughput.py's times do not)."""
    def on_batch(_: None) -> None:
        step()

    flops = flops_by_kind(on_batch, None)
    prof, wall = profiled(on_batch, itertools.repeat(None), device)
    return where_time_goes(prof, wall, step_s, device, flops, peak), prof


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="in1k-vit-s16-mocov3-repre")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    trainer, step, batch = trainer_step(args.preset, args.overrides)
    parts = {"step": timed(step, args.warmup, args.steps)}
    rt = trainer.rt
    with training_attention(trainer.model, rt.device, rt.dtype):  # the attention kernel of the step's forward
        for name, fn in decoder_parts(trainer, batch).items():
            parts[name] = timed(fn, args.warmup, args.steps)
    cuda = rt.device.type == "cuda"
    peak_step = torch.cuda.max_memory_allocated() / 2**20 if cuda else None  # before the profiled steps
    peak = matmul_peak(rt.device, rt.dtype)
    kinds = {}
    kinds["step"], prof = by_kind(step, parts["step"], rt.device, peak)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=args.top)
    print(table, file=sys.stderr)
    del trainer, step
    _, base_step, _ = trainer_step(args.preset, args.overrides + ["recon.enabled=false"])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    parts["step-baseline"] = timed(base_step, args.warmup, args.steps)
    peak_baseline = torch.cuda.max_memory_allocated() / 2**20 if cuda else None  # before the profiled steps
    kinds["step-baseline"], _ = by_kind(base_step, parts["step-baseline"], rt.device, peak)
    ratios = {"step_over_baseline": parts["step"] / parts["step-baseline"],
              # None where the step is not slower than its baseline (noise on a CPU): no extra to share
              "decoder_share_of_extra": (parts["decoder"] / (parts["step"] - parts["step-baseline"])
                                         if parts["step"] > parts["step-baseline"] else None),
              "taps_over_no_taps": parts["encoder-taps"] / parts["encoder"]}
    for name, sec in parts.items():
        print(f"{name:<15}{sec * 1000:9.2f} ms", file=sys.stderr)
    for name, rows in kinds.items():
        print(format_bound(name, rows), file=sys.stderr)
    print(json.dumps({"benchmark": "profile_step", "preset": args.preset, "overrides": args.overrides,
                      "device": torch.cuda.get_device_name() if cuda else "cpu", "date": time.strftime("%Y-%m-%d"),
                      "seconds": parts, "ratios": ratios, "by_kind": kinds, "matmul_peak_tflops": peak / 1e12,
                      "peak_cuda_mb_repre": peak_step,
                      "peak_cuda_mb_baseline": peak_baseline,
                      "top_ops": table}))


if __name__ == "__main__":
    main()
