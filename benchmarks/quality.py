"""Quality benchmark: baseline vs +RePre at identical budget and seeds, beside random-init and supervised rows.

For each method (mocov3 for now), seed and row:
  repre       `fmnist-<method>-repre` pre-trained          baseline    `fmnist-<method>` (recon disabled)
  supervised  the same encoder trained with labels          random      the untrained encoder (no pre-training)
then evaluates k-NN, linear and fine-tune top-1 (Fashion-MNIST test) and the dense probe's mIoU
(fashion-scenes test). Reports mean ± std over seeds and the per-seed paired differences RePre - baseline.

Budget (2 CPU cores): the --set defaults below shorten evaluation (subsets, steps); pre-training runs its
preset as is. Every pre-training run and every evaluation is cached under benchmarks/results/quality/,
keyed by (method, row, seed, hash of the resolved config): an interrupted benchmark resumes where it stopped.

    python benchmarks/quality.py [--methods mocov3] [--seeds 0,1,2] [--rows repre,baseline,supervised,random]
                                 [--only knn,linear,finetune,segment] [--set KEY=VALUE ...] [--plot]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "quality"
TASKS = ["knn", "linear", "finetune", "segment"]
ROWS = ["repre", "baseline", "supervised", "random"]
EVAL_DEFAULTS = [  # evaluation budget for 2 cores; the metric definitions are unchanged
    "eval.knn_train_subset=20000", "eval.knn_test_subset=5000",
    "eval.linear_train_subset=20000", "eval.linear_test_subset=5000", "eval.linear_epochs=20",
    "eval.finetune_steps=150", "eval.finetune_test_subset=5000",
    "eval.segment_train=1000", "eval.segment_test=500",
]


def row_config(method: str, row: str, seed: int, overrides: list[str]):
    from repre.config import load_config

    preset = f"fmnist-{method}" + ("-repre" if row == "repre" else "")
    extra = ["method.name=supervised"] if row == "supervised" else []
    return load_config(preset, [f"train.seed={seed}", "train.diagnose_every=0", "train.progress=false",
                                "eval.knn=false", *EVAL_DEFAULTS, *extra, *overrides])


def run_dir(method: str, row: str, seed: int, cfg) -> Path:
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    return RESULTS / f"{method}-{row}-seed{seed}-{digest}"


def pretrain(cfg, out: Path, tasks: list[str]) -> None:
    """Pre-train unless every requested evaluation is cached or a finished checkpoint exists (only the small
    result files are kept in git: a new checkout re-trains a run whose evaluations are incomplete)."""
    import shutil

    from repre.engine.trainer import pretrain as run

    if all((out / "eval" / t / "result.json").is_file() for t in tasks):
        return
    summary = out / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("completed"):
        if (out / "checkpoints" / "last.pt").is_file():
            return
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # finished elsewhere: train again, same seed
        summary.unlink()
    run(cfg, out, resume=True)


def evaluate(row: str, cfg, out: Path, task: str) -> float:
    """Cached: out/eval/<task>/result.json."""
    import torch

    from repre.builder import build_encoder
    from repre.engine.runtime import setup_runtime
    from repre.eval import encoder_tasks
    from repre.eval import evaluate as eval_checkpoint

    cached = out / "eval" / task / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())["value"]
    if row == "random":
        torch.manual_seed(cfg.train.seed)
        rt = setup_runtime(cfg.train)
        result = encoder_tasks()[task](build_encoder(cfg).to(rt.device), cfg, rt)
    else:
        result = eval_checkpoint(task, out)  # the run's config carries the evaluation budget
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=2))
    return result["value"]


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f}"


def plot(table: dict, curves: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, run in curves.items():
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in lines if r["kind"] == "train"]
        axes[0].plot([r["step"] for r in train], [r["loss_contrastive"] for r in train], label=name)
        if any(r["loss_recon"] for r in train):
            axes[1].plot([r["step"] for r in train], [r["loss_recon"] for r in train], label=name)
    axes[0].set_title("main loss (contrastive; CE for supervised)"), axes[1].set_title("reconstruction loss")
    for ax in axes[:2]:
        ax.set_xlabel("step"), ax.legend()
    rows = list(table)
    tasks = sorted({t for r in rows for t in table[r]})
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        means = [statistics.mean(table[row][t]) if table[row].get(t) else 0 for t in tasks]
        axes[2].bar([j + i * width for j in range(len(tasks))], means, width, label=row)
    axes[2].set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
    axes[2].set_title("test metrics (mean over seeds)"), axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="mocov3")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--only", default=",".join(TASKS), help="evaluations to run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--plot", action="store_true", help="write benchmarks/results/quality/<method>.png")
    args = p.parse_args()
    seeds, rows, tasks = [int(s) for s in args.seeds.split(",")], args.rows.split(","), args.only.split(",")
    report = {}
    for method in args.methods.split(","):
        table: dict[str, dict[str, list[float]]] = {r: {t: [] for t in tasks} for r in rows}
        curves = {}
        for seed in seeds:
            for row in rows:
                cfg = row_config(method, row, seed, args.overrides)
                out = run_dir(method, row, seed, cfg)
                if row != "random":
                    pretrain(cfg, out, tasks)
                    curves.setdefault(row, out)
                for task in tasks:
                    value = evaluate(row, cfg, out, task)
                    table[row][task].append(value)
                    print(f"{method} seed {seed} {row:<10} {task:<8} {value:.4f}", file=sys.stderr, flush=True)
        print(f"\n{method}: mean ± std over seeds {seeds}")
        print(f"{'row':<12}" + "".join(f"{t:<20}" for t in tasks))
        for row in rows:
            print(f"{row:<12}" + "".join(f"{mean_std(table[row][t]):<20}" for t in tasks))
        diffs = {}
        if {"repre", "baseline"} <= set(rows):
            diffs = {t: [a - b for a, b in zip(table["repre"][t], table["baseline"][t], strict=True)] for t in tasks}
            print(f"{'RePre-base':<12}" + "".join(f"{mean_std(diffs[t]):<20}" for t in tasks))
            for t in tasks:
                print(f"  {t}: per seed {', '.join(f'{d:+.4f}' for d in diffs[t])}")
        if args.plot:
            plot(table, curves, RESULTS / f"{method}.png")
        report[method] = {"table": table, "paired_diff": diffs}
    print(json.dumps({"benchmark": "quality", "date": time.strftime("%Y-%m-%d"), "seeds": seeds,
                      "overrides": args.overrides, "eval_budget": EVAL_DEFAULTS, "results": report}))


if __name__ == "__main__":
    main()
