"""Replay the collapse watch over finished runs: when would it warn, and how close did each run come?

    python benchmarks/collapse_watch.py RUN_DIR [RUN_DIR ...] > watch.json

For each run (a `repre pretrain` output folder, e.g. one of quality.py's cached runs) it feeds the train
lines of `metrics.jsonl` to `repre.engine.callbacks.CollapseWatch`, as the run's trainer did, and reports:
the teacher entropy's peak after the first 10% of the run, the steps of the lines above the watch's line (a
watch that warns on any one line would have warned at the first), the step at which the watch warns, and the
run's k-NN where quality.py evaluated it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from repre.engine.callbacks import CollapseWatch


def replay(run: Path) -> dict:
    from repre.config import load_config

    cfg = load_config(str(run / "config.yaml"))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["kind"] == "train"]
    summary = json.loads((run / "summary.json").read_text())
    total = summary.get("total_steps") or cfg.train.max_steps
    out_dim = cfg.method.dino.out_dim if cfg.method.name == "dino" else None
    watch = CollapseWatch(out_dim)
    trainer = SimpleNamespace(state=SimpleNamespace(step=0), total=total)
    warned: list[int] = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(trainer.state.step)
    logging.getLogger("repre").addHandler(handler)
    try:
        for line in train:
            trainer.state.step = line["step"]
            watch.on_log(trainer, line)
    finally:
        logging.getLogger("repre").removeHandler(handler)
    late = [x for x in train if x["step"] > 0.1 * total]
    entropy = [(x["step"], x["teacher_entropy"]) for x in late if "teacher_entropy" in x]
    knn = run / "eval" / "knn" / "result.json"
    report = {"steps": total, "warns_at": warned[0] if warned else None,
              "knn": round(json.loads(knn.read_text())["value"], 4) if knn.is_file() else None,
              "embedding_std_min": round(min(x["embedding_std"] for x in late), 4) if late else None}
    if entropy:
        peak = max(entropy, key=lambda x: x[1])
        report |= {"entropy_line": round(0.95 * math.log(out_dim), 4), "entropy_peak": round(peak[1], 4),
                   "peak_step": peak[0], "entropy_last": round(entropy[-1][1], 4),
                   "steps_above_line": [s for s, e in entropy if e > 0.95 * math.log(out_dim)]}
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
                      "lasting": CollapseWatch.LASTING,
                      "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
