"""A run directory's layout and records, read without torch: which run a checkpoint argument names
(`run_dir`), the results of `repre eval TASK` (RUN/eval/TASK/result.json, or its `--out`), summary.json,
metrics.jsonl's lines. The export's model card and `repre compare` read them back.

    RUN/config.yaml        the resolved config the run trains with (`--resume` reads it)
    RUN/metrics.jsonl      a line per logged window and evaluation
    RUN/tb/                TensorBoard's event files
    RUN/checkpoints/       step-NNNNNNNN.pt (each with a .sha256), last.pt (the newest, the same file)
    RUN/summary.json       the run's result, written when it ends
    RUN/recon.png          the reconstructions of its last step (RePre)
    RUN/eval/TASK/         `repre eval TASK`'s result.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
TB = "tb"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
SUMMARY = "summary.json"
RECON_PNG = "recon.png"
EVAL = "eval"
RESULT = "result.json"


def in_checkpoints(path: str | Path) -> bool:
    """Whether a file sits in a run's checkpoints/ folder."""
    return Path(path).parent.name == CHECKPOINTS


def run_dir(path: str | Path) -> Path:
    """The run directory of a checkpoint argument: the directory itself, or the run above checkpoints/NAME.pt
    (a file elsewhere: its folder)."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if in_checkpoints(path) else path.parent


def write_result(out: Path, result: dict[str, Any]) -> Path:
    """`result` (evaluate()'s dict) as `out`/result.json."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULT
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when there is none or it is not one."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def run_results(run: Path) -> list[dict[str, Any]]:
    """Each `repre eval` result kept in `run`/eval/TASK/, by task name; unreadable files left out. A result
    written before repre recorded which checkpoint it evaluated has no `checkpoint`."""
    results = []
    for path in sorted(Path(run, EVAL).glob(f"*/{RESULT}")):
        result = read_json(path)
        if result:
            results.append({**result, "task": result.get("task", path.parent.name)})
    return results


def metric_lines(run: Path) -> list[dict[str, Any]]:
    """The lines of `run`/metrics.jsonl ([] without one); a line cut short by a crash is left out."""
    try:
        text = Path(run, METRICS).read_text()
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines
