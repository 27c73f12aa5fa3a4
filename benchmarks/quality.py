"""Quality benchmark: baseline vs +RePre at identical budget and seeds, beside random-init and supervised rows.

For each framework (--methods: those of repre.methods.FRAMEWORK_CLASSES, mocov3, dino, moby), seed and row:
  repre       `fmnist-<method>-repre` pre-trained          baseline    `fmnist-<method>` (recon disabled)
  supervised  the same encoder trained with labels          random      the untrained encoder (no pre-training)
then evaluates k-NN, linear and fine-tune top-1 (Fashion-MNIST test) and the dense probe's mIoU
(fashion-scenes test). Reports mean ± std over seeds and the per-seed paired differences RePre - baseline.

Budget (2 CPU cores): the --set defaults below shorten evaluation (subsets, steps); pre-training runs its
preset as is. Every pre-training run and every evaluation is cached outside the repository, under
--results (default $REPRE_BENCH_CACHE/quality, or ~/.cache/repre/benchmarks/quality), keyed by (method, row,
seed, hash of the resolved config, `identity`): an interrupted benchmark resumes where it stopped. The code is
not in the key: a reused run or evaluation is said on stderr with the commit it was computed at (delete its
folder to compute it again). Only the summary goes into the repository: the last stdout line (JSON) and, with
--plot, benchmarks/results/quality/<method>.png.

    python benchmarks/quality.py [--methods mocov3] [--seeds 0,1,2] [--rows repre,baseline,supervised,random]
                                 [--only knn,linear,finetune,segment] [--set KEY=VALUE ...] [--plot]

The search (--search POINTS|all): variants of the RePre branch and of the pre-training, each beside the
baseline trained the same way, evaluated with eval.split=val (a fixed random 10,000 of the Fashion-MNIST train images;
the test split is never read), so the configuration it selects can then be reported on test with fresh seeds:

    python benchmarks/quality.py --search all --seeds 0 [--cached] [--results DIR] [--drop-checkpoints]

A search under `--set KEY=VALUE` is paired with the search it is measured against by benchmarks/paired.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

from bench_cache import cache_dir, check_machine, say_reused  # this folder's module

from repre.config import FRAMEWORKS, idle_sections
from repre.core import run_files
from repre.core.checkpoint_io import versions
from repre.errors import UserError

SUMMARIES = Path(__file__).resolve().parent / "results" / "quality"  # the plots; raw runs: cache_dir("quality")
TASKS = ["knn", "linear", "finetune", "segment"]
ROWS = ["repre", "baseline", "supervised", "random"]
LONG = ["train.batch_size=256", "train.max_steps=800"]  # 4x the images of the presets' 51,200
SEARCH = {  # point: (row, pre-training overrides, the baseline it is compared with)
    "base": ("baseline", [], None),
    "repre": ("repre", [], "base"),  # the preset as it stands
    "width16": ("repre", ["recon.width=16"], "base"),
    "taps-last": ("repre", ["recon.taps=[5]"], "base"),
    "taps-2": ("repre", ["recon.taps=[2,5]"], "base"),
    "taps-6": ("repre", ["recon.taps=6"], "base"),
    "lam0.1": ("repre", ["recon.weight=0.1"], "base"),
    "lam0.5": ("repre", ["recon.weight=0.5"], "base"),
    "lam2": ("repre", ["recon.weight=2.0"], "base"),
    "lam5": ("repre", ["recon.weight=5.0"], "base"),
    "lam10": ("repre", ["recon.weight=10.0"], "base"),
    "normpix": ("repre", ["recon.norm_pix=true"], "base"),  # the Fashion-MNIST presets' choice
    "rawpix": ("repre", ["recon.norm_pix=false"], "base"),  # raw pixels
    "nearest": ("repre", ["recon.upsample=nearest"], "base"),
    "tail2": ("repre", ["recon.out_stride=2"], "base"),  # the last x2 step replaced by a 2x2 pixel shuffle
    "tail4": ("repre", ["recon.out_stride=4"], "base"),  # the last two: at 28 px every step (patch 4)
    "one-view": ("repre", ["recon.views=1"], "base"),  # each image reconstructed from one of its two views
    "taps2": ("repre", ["recon.taps=2"], "base"),  # the last two taps: MoBY's stages at strides 4 and 8, not 2
    "long-base": ("baseline", LONG, None),
    "long": ("repre", LONG, "long-base"),
    # the EMA momentum of a 200-step run (DINO's 0.996 keeps ~45% of the initial teacher after 200 steps); the
    # DINO points up to K4096 were measured at the DINO preset's former batch 256 x 200 steps
    "m0.99": ("baseline", ["method.momentum=0.99"], "base"),
    "m0.98": ("baseline", ["method.momentum=0.98"], "base"),
    # the DINO preset (0.98) against a faster teacher and a larger lr (val split)
    "m0.95": ("baseline", ["method.momentum=0.95"], "m0.98"),
    "lr2e-3": ("baseline", ["method.momentum=0.98", "train.lr=2e-3"], "m0.98"),
    # the teacher's temperature (sharper than the preset's 0.04) and the number of prototypes K (preset 1024)
    "tt0.02": ("baseline", ["method.momentum=0.98", "method.dino.teacher_temp=0.02",
                            "method.dino.warmup_teacher_temp=0.02"], "m0.98"),
    "tt0.07": ("baseline", ["method.momentum=0.98", "method.dino.teacher_temp=0.07",
                            "method.dino.warmup_teacher_temp=0.07"], "m0.98"),
    "K256": ("baseline", ["method.momentum=0.98", "method.dino.out_dim=256"], "m0.98"),
    "K4096": ("baseline", ["method.momentum=0.98", "method.dino.out_dim=4096"], "m0.98"),
    # the CPU presets at their budget of 51,200 images (any --methods): batch, lr, warm-up, crops, encoder
    "b128": ("baseline", ["train.batch_size=128", "train.max_steps=400"], "base"),
    "b64": ("baseline", ["train.batch_size=64", "train.max_steps=800"], "base"),
    "b32": ("baseline", ["train.batch_size=32", "train.max_steps=1600"], "base"),
    "b16": ("baseline", ["train.batch_size=16", "train.max_steps=3200"], "base"),  # DINO: the trend of b256 to b32
    # DINO: the MoCo v3 preset's global crops, (0.25, 1), and local crops below them, (0.05, 0.25)
    "crops0.25": ("baseline", ["aug.crop_scale=[0.25,1.0]", "aug.local_crop_scale=[0.05,0.25]"], "base"),
    "lr-x0.5": ("baseline", ["train.lr=5e-4"], "base"),
    "lr-x1.5": ("baseline", ["train.lr=1.5e-3"], "base"),
    "warm0.05": ("baseline", ["train.warmup_fraction=0.05"], "base"),
    "warm0.2": ("baseline", ["train.warmup_fraction=0.2"], "base"),
    "crop0.4": ("baseline", ["aug.crop_scale=[0.4,1.0]"], "base"),
    "crop0.14": ("baseline", ["aug.crop_scale=[0.14,1.0]"], "base"),
    "femto": ("baseline", ["model.arch=vit_femto_patch4"], "base"),
    "tau0.1": ("baseline", ["method.mocov3.temperature=0.1"], "base"),  # MoCo v3's temperature (preset 0.2)
    "tau0.3": ("baseline", ["method.mocov3.temperature=0.3"], "base"),
    # a wider pico ViT (160-d, 5 heads: ~1.5x the FLOPs) and a deeper one (8 blocks: ~1.3x)
    "d160": ("baseline", ["model.kwargs.embed_dim=160", "model.kwargs.num_heads=5"], "base"),
    "depth8": ("baseline", ["model.kwargs.depth=8"], "base"),
    "avgpool": ("baseline", ["model.kwargs.global_pool=avg"], "base"),  # the patch tokens' mean, not the class token
    # augmentation strength: no blur; no photometric stage at all; brightness and contrast jitter twice as strong
    "blur0": ("baseline", ["aug.blur_prob=[0.0,0.0]"], "base"),
    "photo0": ("baseline", ["aug.jitter_prob=0.0", "aug.blur_prob=[0.0,0.0]", "aug.solarize_prob=[0.0,0.0]",
                            "aug.grayscale_prob=0.0"], "base"),
    "jitter0.8": ("baseline", ["aug.brightness=0.8", "aug.contrast=0.8"], "base"),
    # DINO's knobs not tried above: the head's last layer free to sharpen (official for ViT-S), fewer local
    # crops, the official teacher-temperature warm-up, constant weight decay
    "nll": ("baseline", ["method.dino.norm_last_layer=false"], "base"),
    "local2": ("baseline", ["data.local_crops=2"], "base"),
    "local0": ("baseline", ["data.local_crops=0"], "base"),  # the two global crops only
    "local16": ("baseline", ["data.local_size=16"], "base"),  # 4 x 4 patches a local crop (preset 12 px: 3 x 3)
    "tt-warm": ("baseline", ["method.dino.teacher_temp=0.07", "method.dino.warmup_teacher_temp_fraction=0.3"], "base"),
    "wd-const": ("baseline", ["train.weight_decay_end=0.04"], "base"),
    # DINO at batch 32 with the MoCo v3 preset's longer warm-up (with its larger lr it lifted MoCo v3), and with a
    # faster teacher
    "lr2e-3-warm0.2": ("baseline", ["train.lr=2e-3", "train.warmup_fraction=0.2"], "base"),
    "m0.97-warm0.2": ("baseline", ["method.momentum=0.97", "train.warmup_fraction=0.2"], "base"),
    # a sharper teacher from the start (preset 0.04): its entropy peaks higher, and the watch warns (results)
    "tt0.03": ("baseline", ["method.dino.teacher_temp=0.03", "method.dino.warmup_teacher_temp=0.03"], "base"),
    # DINO's teacher-temperature warm-up (0.04 -> 0.07 gained, but its teacher stayed near uniform) to 0.055 only
    "tt-warm0.055": ("baseline", ["method.dino.teacher_temp=0.055", "method.dino.warmup_teacher_temp_fraction=0.3"],
                     "base"),
    # DINO's own ViT (its class token's init, its local crops' position embedding without antialiasing)
    "init-dino": ("baseline", ["model.init=dino"], "base"),
    # MoCo v3's own ViT recipe (vits.py): the fixed sin-cos table, its initialization, a frozen patch projection
    "init-mocov3": ("baseline", ["model.init=mocov3", "method.mocov3.freeze_patch_embed=true"], "base"),
}
RUNTIME_KEYS = ("num_workers", "device", "progress", "compile")  # with data.root: not part of a run's identity
CACHE_VERSION = 2
# every config key's value that a run's identity leaves out: the default as it was when the key came, so that a
# key added later (with a value that changes nothing) keeps cached runs valid, and a default changed later
# keys the runs that take it apart from those made before
KEYED_DEFAULTS = Path(__file__).resolve().parent / "quality_keyed_defaults.json"
EVAL_DEFAULTS = [  # evaluation budget for 2 cores; the metric definitions are unchanged
    "eval.knn.train_subset=20000", "eval.knn.test_subset=5000",
    "eval.linear.train_subset=20000", "eval.linear.test_subset=5000", "eval.linear.epochs=20",
    "eval.finetune.steps=150", "eval.finetune.test_subset=5000",
    "eval.segment.train=1000", "eval.segment.test=500",
]


def row_config(method: str, row: str, seed: int, overrides: list[str]):
    from repre.config import load_config

    preset = f"fmnist-{method}" + ("-repre" if row == "repre" else "")
    extra = ["method.name=supervised", "data.local_crops=0"] if row == "supervised" else []  # 2 views
    return load_config(preset, [f"train.seed={seed}", "train.diagnose_every=0", "train.progress=false",
                                "eval.knn.enabled=false", *EVAL_DEFAULTS, *extra, *overrides])


def identity(cfg) -> dict:
    """What a cached run is keyed by: the resolved config less the runtime keys, less the keys the run does not
    read (a disabled branch's, another framework's) and less every value equal to its KEYED_DEFAULTS entry; the
    device where it is not the CPU (`train.precision=auto` resolves by the device: `pretrain` refuses a cached
    run of another precision than this machine's)."""
    from repre.config import flatten
    from repre.core.runtime import pick_device

    keyed = json.loads(KEYED_DEFAULTS.read_text())
    flat = flatten(cfg.to_dict())
    if missing := sorted(set(flat) - set(keyed)):
        sys.exit(f"{', '.join(missing)}: not in {KEYED_DEFAULTS.name}; add each with the value that reproduces the "
                 "runs made before it (its default, where it changes nothing)")
    idle = idle_sections(cfg.method.name, cfg.recon.enabled)
    ident = {k: v for k, v in flat.items() if v != keyed[k] and not k.startswith(idle)}
    for key in [f"train.{k}" for k in RUNTIME_KEYS] + ["data.root", "preset", "description"]:
        ident.pop(key, None)
    # named, not checked: a GPU's cached results stay readable (--cached) on a machine without one
    device = pick_device("auto").type if cfg.train.device == "auto" else cfg.train.device
    if device != "cpu":
        ident["device"] = device
    return {"version": CACHE_VERSION, **ident}


def run_dir(method: str, row: str, seed: int, cfg, results: Path) -> Path:
    digest = hashlib.sha1(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return results / f"{method}-{row}-seed{seed}-{digest}"


def pretrain(cfg, out: Path, tasks: list[str]) -> None:
    """Pre-train unless every requested evaluation is cached or a finished checkpoint exists (a run finished
    without its checkpoint, e.g. after --drop-checkpoints, is trained again if an evaluation is missing)."""
    import shutil

    from repre.pretraining import pretrain as run

    summary = out / run_files.SUMMARY
    if summary.is_file():
        check_machine(out, cfg)  # its evaluations too are another machine's
    if all((out / run_files.EVAL / t / run_files.RESULT).is_file() for t in tasks):
        return
    if summary.is_file() and (done := json.loads(summary.read_text())).get("completed"):
        if (out / run_files.CHECKPOINTS / run_files.LAST).is_file():
            say_reused(out, done)
            return
        shutil.rmtree(out / run_files.CHECKPOINTS, ignore_errors=True)  # finished elsewhere: train again, same seed
        summary.unlink()
    run(cfg, out, resume=True)


def cached(out: Path, task: str) -> float | None:
    path = out / run_files.EVAL / task / run_files.RESULT
    return json.loads(path.read_text())["value"] if path.is_file() else None


def evaluate(row: str, cfg, out: Path, task: str) -> float:
    """Cached: out/eval/<task>/result.json."""
    import torch

    from repre.builder import build_encoder
    from repre.core.runtime import setup_runtime
    from repre.eval import encoder_tasks
    from repre.eval import evaluate as eval_checkpoint

    cached = out / run_files.EVAL / task / run_files.RESULT
    if cached.is_file():
        result = json.loads(cached.read_text())
        git = (result.get("versions") or {}).get("git")
        print(f"reusing {task} of {out} (evaluated at {git or 'an unrecorded commit'}; delete {cached} to evaluate "
              "again)", file=sys.stderr)
        return result["value"]
    if row == "random":
        torch.manual_seed(cfg.train.seed)
        rt = setup_runtime(cfg.train)
        result = encoder_tasks()[task](build_encoder(cfg).to(rt.device), cfg, rt)
    else:
        result = eval_checkpoint(task, out, [])  # the run's config carries the budget
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({**result, "versions": versions()}, indent=2))
    return result["value"]


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:  # one seed: no spread to state
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


BOLD_STDS = 1.5  # docs/results.md's rule: a paired difference is bold past this many of its standard deviations


def bold(diffs: list[float]) -> bool:
    """docs/results.md's rule for a paired difference over seeds: the same sign on every seed (at least 3) and
    a mean more than BOLD_STDS of their standard deviations from zero."""
    if len(diffs) < 3 or not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
        return False
    return abs(statistics.mean(diffs)) > BOLD_STDS * statistics.stdev(diffs)


def plot(table: dict, curves: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, run in curves.items():
        lines = run_files.metric_lines(run)
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


def search(method: str, points: list[str], seeds: list[int], tasks: list[str], overrides: list[str],
           results: Path, only_cached: bool, drop: bool) -> dict:
    """Train and evaluate (eval.split=val) each search point; print values and differences to its baseline."""
    import shutil

    table: dict[str, dict[str, list[float | None]]] = {}
    cost: dict[str, list[float]] = {}
    for seed in seeds:
        for point in points:
            row, extra, _ = SEARCH[point]
            # --set changes every point; a point's own changes come after, so they win where both set a key
            cfg = row_config(method, row, seed, [*overrides, *extra, "eval.split=val"])
            out = run_dir(method, f"search-{point}", seed, cfg, results)
            if not only_cached:
                pretrain(cfg, out, tasks)
            for task in tasks:
                value = cached(out, task) if only_cached else evaluate(row, cfg, out, task)
                table.setdefault(point, {}).setdefault(task, []).append(value)
                if value is not None:
                    print(f"search seed {seed} {point:<12} {task:<8} {value:.4f}", file=sys.stderr, flush=True)
            summary = out / run_files.SUMMARY
            if summary.is_file():
                s = json.loads(summary.read_text())
                cost.setdefault(point, []).append(s["train_s"] / max(s["steps"], 1))
            if drop:
                shutil.rmtree(out / run_files.CHECKPOINTS, ignore_errors=True)
    print(f"\nsearch ({method}, eval.split=val, seeds {seeds}): value, then point - its baseline (paired seeds; "
          "* bold by docs/results.md's rule)")
    print(f"{'point':<13}{'s/step':>8}  " + "".join(f"{t:<22}" for t in tasks))
    diffs: dict[str, dict[str, list[float]]] = {}
    bolds: dict[str, dict[str, bool]] = {}
    for point, values in table.items():
        ref = SEARCH[point][2]
        cells = []
        for t in tasks:
            have = [v for v in values[t] if v is not None]
            pairs = [a - b for a, b in zip(values[t], table.get(ref, {}).get(t, []), strict=False)
                     if a is not None and b is not None]
            diffs.setdefault(point, {})[t] = pairs
            bolds.setdefault(point, {})[t] = bold(pairs)
            cell = f"{statistics.mean(have):.4f}" if have else "-"
            cells.append(cell + (f" ({statistics.mean(pairs):+.4f}{'*' if bold(pairs) else ''})" if pairs else ""))
        step = f"{statistics.mean(cost[point]):.3f}" if cost.get(point) else "-"
        print(f"{point:<13}{step:>8}  " + "".join(f"{c:<22}" for c in cells))
    return {"values": table, "diff_to_baseline": diffs, "bold": bolds, "sec_per_step": cost}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="mocov3")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--only", default=",".join(TASKS), help="evaluations to run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--plot", action="store_true", help="write benchmarks/results/quality/<method>.png")
    p.add_argument("--search", default="", help=f"search points (or all): {', '.join(SEARCH)}")
    p.add_argument("--cached", action="store_true", help="report cached results only, train nothing")
    p.add_argument("--results", type=Path, default=None,
                   help="where runs and their evaluations are cached (default: $REPRE_BENCH_CACHE/quality, "
                        "or ~/.cache/repre/benchmarks/quality)")
    p.add_argument("--drop-checkpoints", action="store_true", help="search: delete checkpoints once evaluated")
    args = p.parse_args()
    args.results = args.results or cache_dir("quality")
    seeds, rows, tasks = [int(s) for s in args.seeds.split(",")], args.rows.split(","), args.only.split(",")
    methods = args.methods.split(",")
    for option, given, valid in (("--methods", methods, FRAMEWORKS), ("--rows", rows, ROWS), ("--only", tasks, TASKS)):
        if unknown := [x for x in given if x not in valid]:  # before anything trains
            p.error(f"{option}: unknown {unknown}; choose from {', '.join(valid)}")
    if args.search:
        points = list(SEARCH) if args.search == "all" else args.search.split(",")
        unknown = [x for x in points if x not in SEARCH]
        if unknown:
            sys.exit(f"unknown search points {unknown}; choose from {', '.join(SEARCH)}")
        if len(methods) > 1:
            p.error(f"--search compares the points of one method: give one of {', '.join(methods)}")
        method = methods[0]
        for point in points:  # a point of another method's keys fails here, not after the points before it trained
            try:
                cfg = row_config(method, SEARCH[point][0], seeds[0], [*args.overrides, *SEARCH[point][1]])
            except UserError as exc:
                p.error(f"search point {point} does not apply to {method}: {exc}")
            idle = [item for item in SEARCH[point][1] if item.startswith(idle_sections(cfg.method.name))]
            if idle:  # a key the method does not read: the point would train something else than it says
                p.error(f"search point {point} does not apply to {method}: {', '.join(idle)} read by another method")
        report = search(method, points, seeds, tasks, args.overrides, args.results / "search", args.cached,
                        args.drop_checkpoints)
        print(json.dumps({"benchmark": "quality-search", "date": time.strftime("%Y-%m-%d"), "method": method,
                          "seeds": seeds, "overrides": args.overrides, "eval_budget": EVAL_DEFAULTS, **report}))
        return
    report = {}
    for method in methods:
        by_seed: dict[str, dict[str, dict[int, float]]] = {r: {t: {} for t in tasks} for r in rows}
        curves = {}
        for seed in seeds:
            for row in rows:
                cfg = row_config(method, row, seed, args.overrides)
                out = run_dir(method, row, seed, cfg, args.results)
                if row != "random" and not args.cached:
                    pretrain(cfg, out, tasks)
                if (out / run_files.METRICS).is_file():
                    curves.setdefault(row, out)
                for task in tasks:
                    value = cached(out, task) if args.cached else evaluate(row, cfg, out, task)
                    if value is None:
                        print(f"{method} seed {seed} {row:<10} {task:<8} not cached", file=sys.stderr)
                        continue
                    by_seed[row][task][seed] = value
                    print(f"{method} seed {seed} {row:<10} {task:<8} {value:.4f}", file=sys.stderr, flush=True)
        table = {r: {t: [by_seed[r][t][s] for s in seeds if s in by_seed[r][t]] for t in tasks} for r in rows}
        print(f"\n{method}: mean ± std over seeds {seeds}")
        print(f"{'row':<12}" + "".join(f"{t:<20}" for t in tasks))
        for row in rows:
            print(f"{row:<12}" + "".join(f"{mean_std(table[row][t]):<20}" for t in tasks))
        diffs, bolds = {}, {}
        if {"repre", "baseline"} <= set(rows):  # paired by seed: a seed either row lacks (--cached) is left out
            diffs = {t: [by_seed["repre"][t][s] - by_seed["baseline"][t][s] for s in seeds
                         if s in by_seed["repre"][t] and s in by_seed["baseline"][t]] for t in tasks}
            bolds = {t: bold(diffs[t]) for t in tasks}
            print(f"{'RePre-base':<12}" + "".join(f"{mean_std(diffs[t]) + ('*' if bolds[t] else ''):<20}"
                                                 for t in tasks) + "  (* bold by docs/results.md's rule)")
            for t in tasks:
                print(f"  {t}: per seed {', '.join(f'{d:+.4f}' for d in diffs[t])}")
        if args.plot:
            SUMMARIES.mkdir(parents=True, exist_ok=True)
            plot(table, curves, SUMMARIES / f"{method}.png")
        report[method] = {"table": table, "paired_diff": diffs, "bold": bolds}
    print(json.dumps({"benchmark": "quality", "date": time.strftime("%Y-%m-%d"), "seeds": seeds,
                      "overrides": args.overrides, "eval_budget": EVAL_DEFAULTS, "results": report}))


if __name__ == "__main__":
    main()
