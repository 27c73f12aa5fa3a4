"""What a `repre` command costs around its work: the wall time of a tiny `repre pretrain` (2 steps of 16
generated 16-px images, a 4-block ViT of width 32), and of it the exit, from its summary line on stdout to the
process's end. Two ways to start it, alternated round by round:

- `console`: `python -m repre` (what the `repre` script runs: `repre.cli.console`, which freezes the objects the
  imports made out of the garbage collector's last collection);
- `main`: `repre.cli.main` called and its status given to `sys.exit`, without that.

    python benchmarks/startup.py [--rounds 7]

Prints one JSON line per round, then the medians and their ratios (main / console).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TINY = ["data.name=synthetic", "data.image_size=16", "data.synthetic_train=64", "data.synthetic_test=32",
        "model.arch=vit_tiny_patch16_224", "model.kwargs={patch_size: 4, embed_dim: 32, depth: 4, num_heads: 2}",
        "recon.width=16", "train.batch_size=16", "train.max_steps=2", "train.precision=fp32",
        "train.num_workers=0", "train.progress=false", "eval.knn.enabled=false"]
STARTS = {"console": [sys.executable, "-m", "repre"],
          "main": [sys.executable, "-c", "import sys; from repre.cli import main; sys.exit(main())"]}


def once(start: list[str], out: Path) -> dict[str, float]:
    """Wall seconds of one run, and of its exit (summary line to end)."""
    cmd = [*start, "pretrain", "--out", str(out)] + [arg for item in TINY for arg in ("--set", item)]
    begin = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    summary_at = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith('{"completed"'):
            summary_at = time.perf_counter()
    if proc.wait() != 0 or summary_at is None:
        raise SystemExit(f"{' '.join(cmd)} failed (status {proc.returncode})")
    end = time.perf_counter()
    return {"wall_s": end - begin, "exit_s": end - summary_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[dict[str, float]]] = {name: [] for name in STARTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(STARTS) if r % 2 == 0 else list(STARTS)[::-1]
            for name in order:
                times[name].append(once(STARTS[name], Path(tmp) / f"{name}-{r}"))
            print(json.dumps({"round": r, **{n: {k: round(v, 3) for k, v in times[n][-1].items()} for n in STARTS}}),
                  flush=True)
    med = {n: {k: statistics.median(t[k] for t in times[n]) for k in ("wall_s", "exit_s")} for n in STARTS}
    print(json.dumps({
        "benchmark": "startup", "rounds": args.rounds,
        "median": {n: {k: round(v, 3) for k, v in m.items()} for n, m in med.items()},
        "ratio_main_over_console": {k: round(med["main"][k] / med["console"][k], 3) for k in ("wall_s", "exit_s")},
        "machine": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
