"""Replay the collapse watch over finished runs: when would it warn, and how close did each run come?

    python benchmarks/collapse_watch.py RUN_DIR [RUN_DIR ...] > watch.json

For each run (a `repre pretrain` output folder, e.g. one of quality.py's cached runs) it feeds the train
lines of `metrics.jsonl` to `repre.engine.callbacks.CollapseWatch`, as the run's trainer did, and reports:
the teacher entropy's peak after the first 10% of the run (and the least entropy of a batch's mean teacher
output, where the run logged it), the steps of the lines above the watch's line (a
watch that warns on any one line would have warned at the first), the step at which the watch warns, and the
run's k-NN where quality.py evaluated it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

from repre.core import run_files
from repre.engine.callbacks import CollapseWatch


def finite(line: dict) -> bool:
    """Whether the trainer gave this train line to its callbacks: every window average finite (the step's speed,
    null in a window with no step timed, and the diagnostics' values are no window averages)."""
    averages = [v for k, v in line.items() if k not in ("step", "kind", "images_per_sec") and not k.startswith("diag_")]
    return all(v is not None and math.isfinite(v) for v in averages)


def replay(run: Path) -> dict:
    raw = yaml.safe_load((run / run_files.CONFIG).read_text())
    method = raw["method"]
    out_dim = method.get("dino", {}).get("out_dim", method.get("out_dim")) if method["name"] == "dino" else None
    train = [x for x in run_files.metric_lines(run) if x["kind"] == "train"]
    total = run_files.read_json(run / run_files.SUMMARY)["total_steps"]
    watch = CollapseWatch(out_dim, raw["train"]["log_every"], batch_size=raw["train"]["batch_size"])
    trainer = SimpleNamespace(state=SimpleNamespace(step=0), total=total)
    for line in filter(finite, train):
        trainer.state.step = line["step"]
        watch.on_log(trainer, line)
    watch.on_fit_end(trainer, None, True)
    late = [x for x in filter(finite, train) if x["step"] > 0.1 * total]
    knn = run / run_files.EVAL / "knn" / run_files.RESULT
    report = {"steps": total, "warns_at": watch.warned_at,
              "knn": round(json.loads(knn.read_text())["value"], 4) if knn.is_file() else None,
              "embedding_std_min": round(min(x["embedding_std"] for x in late), 4) if late else None}
    entropy = [(x["step"], x["teacher_entropy"]) for x in late if "teacher_entropy" in x]
    if entropy and out_dim:
        line = 0.95 * math.log(out_dim)
        peak = max(entropy, key=lambda x: x[1])
        report |= {"entropy_line": round(line, 4), "entropy_peak": round(peak[1], 4), "peak_step": peak[0],
                   "entropy_last": round(entropy[-1][1], 4), "steps_above_line": [s for s, e in entropy if e > line]}
    spread = [(x["step"], x["teacher_batch_entropy"]) for x in late if "teacher_batch_entropy" in x]
    if spread:  # the batch's outputs spread over exp(this) prototypes: its least, and where
        least = min(spread, key=lambda x: x[1])
        report |= {"batch_entropy_min": round(least[1], 4), "batch_entropy_min_step": least[0]}
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    runs = {}
    for run in args.runs:
        runs[run.name] = replay(run)
        r = runs[run.name]
        print(f"{run.name:<48} peak {r.get('entropy_peak', '-')!s:<7} above {len(r.get('steps_above_line', []))!s:<4}"
              f"warns {r['warns_at']!s:<6} k-NN {r['knn']}", file=sys.stderr)
    print(json.dumps({"benchmark": "collapse-watch", "date": time.strftime("%Y-%m-%d"),
                      "watch": {"share": CollapseWatch.SHARE, "span": CollapseWatch.SPAN, "lines": CollapseWatch.LINES},
                      "runs": runs}))  # one line, the last, as every script's


if __name__ == "__main__":
    main()
