"""The distributed code path against a plain run: `torchrun --nproc_per_node N` (DDP: NCCL on CUDA, gloo on CPU;
N = 1 runs every collective, SyncBatchNorm and the DDP wrapper on one device) against one plain process with the
same global batch, fp32, no drop path; the per-step losses must agree.

    python benchmarks/ddp_check.py [--device cuda] [--procs 1] [--steps 10] [--preset fmnist-mocov3-repre]

Prints a JSON line: the largest relative loss difference, and "ok" when it is below --tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from repre.core import run_files


def run(out: Path, procs: int, preset: str, overrides: list[str]) -> list[float]:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
              if procs else [sys.executable])
    cmd = [*launch, "-m", "repre", "pretrain", "--config", preset, "--out", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
    if done.returncode:
        sys.exit(f"{' '.join(cmd[:6])} ... failed:\n{done.stderr[-3000:]}")
    return [line["loss"] for line in run_files.metric_lines(out) if line["kind"] == "train"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--procs", type=int, default=1, help="torchrun processes (one GPU each on CUDA)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--preset", default="fmnist-mocov3-repre")
    p.add_argument("--tolerance", type=float, default=1e-3)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    overrides = [f"train.device={args.device}", "train.precision=fp32", "model.drop_path=0.0", "data.name=synthetic",
                 "data.image_size=28", "train.batch_size=64", f"train.max_steps={args.steps}", "train.log_every=1",
                 "eval.knn.enabled=false", "train.diagnose_every=0", "train.num_workers=2", "train.progress=false",
                 *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        plain = run(Path(tmp) / "plain", 0, args.preset, overrides)
        ddp = run(Path(tmp) / "ddp", args.procs, args.preset, overrides)
    diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(plain, ddp, strict=True))
    print(json.dumps({"benchmark": "ddp_check", "date": time.strftime("%Y-%m-%d"), "device": args.device,
                      "procs": args.procs, "steps": args.steps, "max_rel_loss_diff": diff,
                      "ok": diff < args.tolerance, "plain": plain, "ddp": ddp,
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
