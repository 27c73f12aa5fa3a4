"""`repre compare`: runs side by side. For each run what it reports (its summary, or the last train line of a run
that has not finished; the k-NN during and after training; each `repre eval` result kept in it), then the config
keys on which the runs differ.

The first run is the reference: the others' numbers carry their difference to it (a ratio for speed and time),
so a RePre run given after its baseline reads as RePre's gain and cost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repre.config import flatten, load_config
from repre.core.run_files import metric_lines, read_json, run_dir, run_results
from repre.errors import UserError

Row = tuple[str, list[Any], Callable[[Any, Any], str]]


def compare(runs: list[str | Path]) -> dict[str, Any]:
    """{"command": "compare", "runs": [what each run reports], "differences": {config key: [value per run]}}."""
    folders = [_run_folder(r) for r in runs]
    configs = [load_config(str(f / "config.yaml")) for f in folders]
    flat = [flatten(c.to_dict()) for c in configs]
    differences = {key: [c.get(key) for c in flat] for key in sorted(set().union(*flat))
                   if len({json.dumps(c.get(key), sort_keys=True) for c in flat}) > 1}
    runs = [run_record(f, c.recon.enabled) for f, c in zip(folders, configs, strict=True)]
    return {"command": "compare", "runs": runs, "differences": differences}


def _run_folder(path: str | Path) -> Path:
    folder = run_dir(path)
    if not (folder / "config.yaml").is_file():
        raise UserError(f"{path} is not a run directory (no config.yaml in {folder}); give folders that "
                        "`repre pretrain --out` wrote, or their checkpoints")
    return folder


def run_record(folder: Path, recon: bool) -> dict[str, Any]:
    """What a run reports: its summary.json (a run still going or stopped without one: its last train line) and
    its k-NN evaluations by step (`knn`: [step, top-1, quick]; quick: on the periodic subsets), then its
    `repre eval` results. `loss_recon` is None for a run without the reconstruction branch."""
    summary = read_json(folder / "summary.json")
    lines = metric_lines(folder)
    last = next((line for line in reversed(lines) if line.get("kind") == "train"), {})
    knn = [[line["step"], line["knn_top1"], bool(line.get("knn_quick"))] for line in lines
           if line.get("kind") == "eval" and line.get("knn_top1") is not None]
    evaluations = [{"task": r["task"], "metric": r.get("metric"), "value": r.get("value"),
                    "step": (r.get("checkpoint") or {}).get("step"), "set": (r.get("checkpoint") or {}).get("set", [])}
                   for r in run_results(folder)]
    return {
        "run": str(folder),
        "completed": summary.get("completed"),  # None: no summary (running, or killed)
        "steps": summary.get("steps", last.get("step")),
        "total_steps": summary.get("total_steps"),
        "wall_s": summary.get("wall_s"),
        "images_per_sec": summary.get("images_per_sec"),
        "loss_contrastive": summary.get("loss_contrastive", last.get("loss_contrastive")),
        "loss_recon": summary.get("loss_recon", last.get("loss_recon")) if recon else None,
        "knn_top1": summary.get("knn_top1"),
        "knn": knn,
        "evaluations": evaluations,
    }


# ---------------------------------------------------------------- the table


def table(result: dict[str, Any]) -> str:
    """The runs as columns, what they report as rows, then the config keys that differ."""
    names = short_names([r["run"] for r in result["runs"]])
    report = report_rows(result["runs"])
    differing = [(key, values, _plain) for key, values in result["differences"].items()]
    cells = [[fmt(v, values[0] if i else None) for i, v in enumerate(values)] for _, values, fmt in report + differing]
    label_width = min(40, max(len(label) for label, _, _ in report + differing))
    widths = [min(32, max([len(name)] + [len(row[i]) for row in cells])) for i, name in enumerate(names)]
    lines = [_line("", names, label_width, widths)]
    lines += [_line(label, row, label_width, widths) for (label, _, _), row in zip(report, cells, strict=False)]
    if len(names) > 1:
        lines.append("config keys that differ:" if differing else "the runs' configs are the same")
    lines += [_line(label, row, label_width, widths) for (label, _, _), row in zip(differing, cells[len(report):],
                                                                                 strict=True)]
    return "\n".join(lines)


def report_rows(runs: list[dict[str, Any]]) -> list[Row]:
    """(label, a value per run, how a value reads against the first run's) for what the runs report."""
    rows: list[Row] = [
        ("steps", [_steps(r) for r in runs], _text),
        ("images/s", [r["images_per_sec"] for r in runs], _ratio),
        ("wall", [r["wall_s"] for r in runs], _duration),
        ("loss_contrastive (last)", [r["loss_contrastive"] for r in runs], _difference),
        ("loss_recon (last)", [r["loss_recon"] for r in runs], _difference),
        ("knn top-1 (run's end)", [r["knn_top1"] for r in runs], _difference),
        ("knn top-1 (quick, best)", [_best_quick(r) for r in runs], _text),
    ]
    labels: dict[str, dict[int, Any]] = {}
    for i, r in enumerate(runs):
        for e in r["evaluations"]:
            label = f"eval {e['task']} {e['metric']}" + (f" [{', '.join(map(str, e['set']))}]" if e["set"] else "")
            at = "" if e["step"] in (None, r["steps"]) else f" @{e['step']}"
            labels.setdefault(label, {})[i] = (e["value"], at)
    for label, by_run in labels.items():
        rows.append((label, [by_run.get(i) for i in range(len(runs))], _evaluated))
    return [row for row in rows if any(v is not None for v in row[1])]


def _steps(r: dict[str, Any]) -> str | None:
    if r["steps"] is None:
        return None
    state = {True: "", False: " stopped", None: " no summary"}[r["completed"]]
    return f"{r['steps']}" + (f"/{r['total_steps']}" if r["total_steps"] not in (None, r["steps"]) else "") + state


def _best_quick(r: dict[str, Any]) -> str | None:
    quick = [(top1, step) for step, top1, is_quick in r["knn"] if is_quick]
    if not quick:
        return None
    top1, step = max(quick)
    return f"{top1:.4f} @{step}"


def _number(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _text(v: str | None, first: Any) -> str:
    return "-" if v is None else v


def _plain(v: Any, first: Any) -> str:
    """A value as --set would write it (true, null, [2, 5]); a report's own text as it is."""
    return v if isinstance(v, str) else _number(v) if isinstance(v, float) else json.dumps(v)


def _difference(v: Any, first: Any) -> str:
    if v is None:
        return "-"
    return _number(v) + (f" ({v - first:+.4f})" if isinstance(first, (int, float)) else "")


def _ratio(v: Any, first: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" + (f" (x{v / first:.2f})" if isinstance(first, (int, float)) and first else "")


def _duration(v: Any, first: Any) -> str:
    if v is None:
        return "-"
    text = f"{v / 60:.1f} min" if v >= 60 else f"{v:.0f} s"
    return text + (f" (x{v / first:.2f})" if isinstance(first, (int, float)) and first else "")


def _evaluated(v: Any, first: Any) -> str:
    if v is None:
        return "-"
    (value, at), base = v, first[0] if first else None
    return _difference(value, base if isinstance(base, (int, float)) else None) + at


def _line(label: str, cells: list[str], label_width: int, widths: list[int]) -> str:
    parts = [_cut(label, label_width).ljust(label_width)]
    parts += [_cut(c, w).ljust(w) for c, w in zip(cells, widths, strict=True)]
    return "  ".join(parts).rstrip()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def short_names(paths: list[str]) -> list[str]:
    """The shortest trailing parts that tell the runs apart: runs/a/seed0, runs/b/seed0 -> a/seed0, b/seed0."""
    parts = [Path(p).parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return paths
