"""The distributed code path against a plain run: `torchrun --nproc_per_node N` (DDP: NCCL on CUDA, gloo on CPU;
N = 1 runs every collective, SyncBatchNorm and the DDP wrapper on one device) against one plain process with the
same global batch, fp32, no drop path; the per-step losses must agree.

    python benchmarks/ddp_check.py [--device cuda] [--procs 1] [--steps 10] [--preset fmnist-mocov3-repre]
        [--set KEY=VALUE ...]
                                   [--plain-sync-bn]

The two runs differ by design in one place: the heads' batch norm, which under torchrun is repre's SyncBatchNorm
(per-process mean and variance, combined) and in a plain process torch's batch norm. Their results differ by
rounding, which training then amplifies step by step. `--plain-sync-bn` runs the plain process with the
SyncBatchNorm formula too (a one-process exchange), so that any remaining difference is the distributed path's:
1 process then agrees exactly, 2 processes to the rounding of the gradients' all-reduce.

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


def run(out: Path, procs: int, preset: str, overrides: list[str], sync_bn: bool = False) -> list[float]:
    if procs:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m",
                  "repre"]
    else:
        launch = [sys.executable, __file__, "--as-plain-sync-bn"] if sync_bn else [sys.executable, "-m", "repre"]
    cmd = [*launch, "pretrain", "--config", preset, "--out", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
    if done.returncode:
        sys.exit(f"{' '.join(cmd[:6])} ... failed:\n{done.stderr[-3000:]}")
    return [line["loss"] for line in run_files.metric_lines(out) if line["kind"] == "train"]


def plain_with_sync_bn(argv: list[str]) -> int:
    """`repre` in one process with the heads' batch norm computed as under torchrun: SyncBatchNorm over a
    one-process "exchange" (each statistic passed through)."""
    from repre.cli import main as repre_main
    from repre.engine import trainer
    from repre.models import sync_bn

    sync_bn.is_distributed = lambda: True
    sync_bn.all_gather_grad = lambda t: t[None]  # [2C + 1] -> [world = 1, 2C + 1]
    build = trainer.Trainer._build_model

    def build_with_sync_bn(self: trainer.Trainer) -> object:
        return sync_bn.convert_sync_batchnorm(build(self))

    trainer.Trainer._build_model = build_with_sync_bn
    return repre_main(argv)


def main() -> None:
    if sys.argv[1:2] == ["--as-plain-sync-bn"]:
        sys.exit(plain_with_sync_bn(sys.argv[2:]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--procs", type=int, default=1, help="torchrun processes (one GPU each on CUDA)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--preset", default="fmnist-mocov3-repre")
    p.add_argument("--tolerance", type=float, default=1e-3)
    p.add_argument("--plain-sync-bn", action="store_true",
                   help="the plain process computes the heads' batch norm with the SyncBatchNorm formula")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    overrides = [f"train.device={args.device}", "train.precision=fp32", "model.drop_path=0.0", "data.name=synthetic",
                 "data.image_size=28", "train.batch_size=64", f"train.max_steps={args.steps}", "train.log_every=1",
                 "eval.knn.enabled=false", "train.diagnose_every=0", "train.num_workers=2", "train.progress=false",
                 *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        plain = run(Path(tmp) / "plain", 0, args.preset, overrides, args.plain_sync_bn)
        ddp = run(Path(tmp) / "ddp", args.procs, args.preset, overrides)
    diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(plain, ddp, strict=True))
    print(json.dumps({"benchmark": "ddp_check", "date": time.strftime("%Y-%m-%d"), "device": args.device,
                      "procs": args.procs, "steps": args.steps, "plain_sync_bn": args.plain_sync_bn,
                      "max_rel_loss_diff": diff, "ok": diff < args.tolerance, "plain": plain, "ddp": ddp,
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
