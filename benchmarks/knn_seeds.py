"""k-NN top-1 after the default run: RePre vs baseline over several seeds, beside a random-init encoder.

Each run is `repre pretrain --config PRESET --set train.seed=S` in a child process, written outside the
repository under $REPRE_BENCH_CACHE/knn_seeds (default ~/.cache/repre/benchmarks/knn_seeds), in a folder named
by the preset, the seed and the --set items, and cached: a finished run (summary.json with completed=true) is
not run again (stderr names it and the commit it trained at), so an interrupted benchmark continues where it
stopped. The summary is the last stdout line (JSON).

    python benchmarks/knn_seeds.py [--seeds 0,1,2] [--rows repre,baseline,random] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from bench_cache import cache_dir, check_settings, folder_name, say_reused  # this folder's module

from repre.core import run_files

PRESETS = {"repre": "fmnist-mocov3-repre", "baseline": "fmnist-mocov3"}


def run(preset: str, seed: int, overrides: list[str]) -> dict:
    out = cache_dir("knn_seeds") / folder_name(f"{preset}-seed{seed}", overrides)
    summary = out / run_files.SUMMARY
    given = [f"train.seed={seed}", "train.progress=false", "train.diagnose_every=0", *overrides]
    if summary.is_file() and json.loads(summary.read_text()).get("completed"):
        check_settings(out, preset, given)
        say_reused(out, json.loads(summary.read_text()))
        return json.loads(summary.read_text())
    cmd = [sys.executable, "-m", "repre", "pretrain", "--config", preset, "--out", str(out), "--resume"]
    for item in given:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def random_init(seed: int, overrides: list[str]) -> float:
    import torch

    from repre.builder import build_encoder
    from repre.config import load_config
    from repre.core.runtime import setup_runtime
    from repre.eval.knn import knn_eval

    cfg = load_config(PRESETS["repre"], [f"train.seed={seed}", *overrides])
    torch.manual_seed(seed)
    encoder = build_encoder(cfg)
    rt = setup_runtime(cfg.train)
    return knn_eval(encoder.to(rt.device), cfg, rt)["value"]


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default="repre,baseline,random", help="of repre, baseline, random")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = args.rows.split(",")
    if unknown := set(wanted) - {*PRESETS, "random"}:
        p.error(f"--rows: unknown {sorted(unknown)}; choose from repre, baseline, random")
    presets = {k: v for k, v in PRESETS.items() if k in wanted}
    rows: dict[str, dict[int, dict]] = {k: {} for k in presets}
    for seed in seeds:
        for key, preset in presets.items():
            rows[key][seed] = run(preset, seed, args.overrides)
            s = rows[key][seed]
            print(f"seed {seed} {key:<9} knn {s['knn_top1']:.4f}  {s['images_per_sec']:.0f} img/s  {s['wall_s']:.0f} s",
                  file=sys.stderr, flush=True)
    table = {
        key: {"knn_top1": [rows[key][s]["knn_top1"] for s in seeds], "wall_s": [rows[key][s]["wall_s"] for s in seeds],
              "images_per_sec": [rows[key][s]["images_per_sec"] for s in seeds]}
        for key in presets
    }
    if "random" in wanted:
        table["random_init"] = {"knn_top1": [random_init(s, args.overrides) for s in seeds]}
    print(f"\n{'encoder':<13}{'k-NN top-1 (mean ± std)':<26}per seed")
    for key, row in table.items():
        m, sd = mean_std(row["knn_top1"])
        print(f"{key:<13}{m:.4f} ± {sd:.4f}{'':<8}{', '.join(f'{v:.4f}' for v in row['knn_top1'])}")
    paired = None
    if len(presets) == 2:
        diffs = [rows["repre"][s]["knn_top1"] - rows["baseline"][s]["knn_top1"] for s in seeds]
        dm, dsd = mean_std(diffs)
        print(f"RePre - baseline (paired by seed): {dm:+.4f} ± {dsd:.4f}  ({', '.join(f'{d:+.4f}' for d in diffs)})")
        paired = {"per_seed": diffs, "mean": dm, "std": dsd}
    summary = {key: dict(zip(("mean", "std"), mean_std(row["knn_top1"]), strict=True)) for key, row in table.items()}
    print(json.dumps({"benchmark": "knn_seeds", "date": time.strftime("%Y-%m-%d"), "seeds": seeds,
                      "overrides": args.overrides, "table": table, "summary": summary, "paired_diff": paired}))


if __name__ == "__main__":
    main()
