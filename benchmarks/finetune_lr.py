"""Fine-tuning's lr and layer decay on the validation split: what the Fashion-MNIST presets' values rest on.

Pre-trains PRESET once (`repre pretrain --set train.seed=S`, cached outside the repository under
$REPRE_BENCH_CACHE/finetune_lr, default ~/.cache/repre/benchmarks/finetune_lr), then runs `repre eval finetune`
on its checkpoint for each (lr, layer decay) with `eval.split=val` (held-out training images: the test split is
never read) and the quality benchmark's fine-tuning budget. Each evaluation is cached in its own folder (named by
its lr, decay, and the hash of the budget and --set items), so an interrupted sweep continues where it stopped.
The summary is the last stdout line (JSON).

    python benchmarks/finetune_lr.py [--preset fmnist-mocov3] [--seed 0] [--grid 1e-3:0.75,3e-3:0.75,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_cache import cache_dir, check_settings, folder_name, say_reused  # this folder's module

from repre.core import run_files

GRID = "1e-3:0.75,3e-3:0.75,1e-2:0.75,3e-3:0.9,1e-2:0.6"  # lr per 256 images : layer decay
BUDGET = ["eval.finetune.steps=150", "eval.finetune.test_subset=5000"]  # quality.py's EVAL_DEFAULTS


def pretrain(preset: str, seed: int, out: Path) -> dict:
    summary = out / run_files.SUMMARY
    if summary.is_file() and json.loads(summary.read_text()).get("completed"):
        check_settings(out, preset, [f"train.seed={seed}", "train.progress=false", "train.diagnose_every=0",
                                     "eval.knn.enabled=false"])
        say_reused(out, json.loads(summary.read_text()))
    else:
        cmd = [sys.executable, "-m", "repre", "pretrain", "--config", preset, "--out", str(out), "--resume",
               "--set", f"train.seed={seed}", "--set", "train.progress=false", "--set", "train.diagnose_every=0",
               "--set", "eval.knn.enabled=false"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def finetune(run: Path, lr: str, decay: str, overrides: list[str]) -> dict:
    out = run / "finetune-sweep" / folder_name(f"lr{lr}-decay{decay}", [*BUDGET, *overrides])
    result = out / run_files.RESULT
    if result.is_file():
        print(f"reusing the evaluation {out} (delete it to evaluate again)", file=sys.stderr)
    else:
        cmd = [sys.executable, "-m", "repre", "eval", "finetune", "--checkpoint", str(run), "--out", str(out)]
        for item in ["eval.split=val", *BUDGET, f"eval.finetune.lr={lr}", f"eval.finetune.layer_decay={decay}",
                     "train.progress=false", *overrides]:
            cmd += ["--set", item]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)  # the evaluation keeps its result there
    return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fmnist-mocov3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default=GRID, help="comma-separated LR:LAYER_DECAY pairs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="for the evaluations")
    args = p.parse_args()
    grid = [tuple(item.split(":")) for item in args.grid.split(",")]
    if any(len(pair) != 2 for pair in grid):
        p.error(f"--grid {args.grid!r}: give LR:LAYER_DECAY pairs, e.g. {GRID}")
    start = time.perf_counter()
    preset = Path(args.preset)  # a YAML file's run is named by its name and its text's hash
    settings = [preset.read_text()] if preset.suffix in (".yaml", ".yml") and preset.is_file() else []
    run = cache_dir("finetune_lr") / folder_name(f"{preset.name}-seed{args.seed}", settings)
    summary = pretrain(args.preset, args.seed, run)
    rows = []
    for lr, decay in grid:
        result = finetune(run, lr, decay, args.overrides)
        rows.append({"lr": float(lr), "layer_decay": float(decay), "val_top1": result["value"]})
        print(f"lr {lr:>6}  layer decay {decay:>5}  validation top-1 {result['value']:.4f}", flush=True)
    print(json.dumps({"benchmark": "finetune_lr", "date": time.strftime("%Y-%m-%d"), "preset": args.preset,
                      "seed": args.seed, "budget": BUDGET, "overrides": args.overrides,
                      "pretrain": {k: summary.get(k) for k in ("steps", "knn_top1", "precision", "versions")},
                      "rows": rows, "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
