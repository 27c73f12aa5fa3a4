"""Where `repre eval` keeps its results and how they are read back, without torch: RUN/eval/TASK/result.json
for the run's newest checkpoint measured with the run's settings, a folder under it for another checkpoint or
other settings (`eval_dir`), a result the run's going on superseded moved aside (`move_superseded_result`);
`write_result`, `run_results`. The export's model card and `repre compare` read them."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from repre.config import RUN_ONLY_KEYS
from repre.config.reads import other_tasks
from repre.core.run_files import EVAL, RESULT, checkpoint_step, in_checkpoints, read_json, run_dir, step_name


def measured_otherwise(overrides: list[str], task: str) -> list[str]:
    """The `--set` items of an evaluation of `task` that change what it measures (other images, a subset,
    another k): those of keys outside `RUN_ONLY_KEYS` (they change how an evaluation runs, not what it measures;
    `train.precision` is not one: it rounds the features measured, which the official protocols compute in fp32)
    and outside the other tasks' sections; of a key given twice, the later item, the one the evaluation takes."""
    last = {item.split("=")[0].strip(): item for item in overrides}
    return [item for key, item in last.items()
            if key not in RUN_ONLY_KEYS and not key.startswith(other_tasks(task))]


def _eval_location(checkpoint: str | Path, task: str, overrides: list[str]) -> tuple[Path, int | None, bool, str]:
    """(RUN/eval/TASK, the checkpoint's step (`checkpoint_step`), whether it is earlier than the run's newest,
    the name of the folder of the settings that change what is measured or "")."""
    path = Path(checkpoint).resolve()
    run = run_dir(path)
    step = checkpoint_step(path)
    earlier = step is not None and step != checkpoint_step(run)
    given = ",".join(sorted(measured_otherwise(overrides, task)))  # the same settings in any order: one folder
    digest = hashlib.sha1(given.encode()).hexdigest()[:8]
    settings = re.sub(r"[\s\[\](){}'\"]", "", given)
    settings = re.sub(r"[^A-Za-z0-9._,=+-]", "_", settings)  # a name a shell takes as it is (no glob, no /)
    if len(settings) > 80:
        settings = f"{settings[:60]}..{digest}"
    elif settings != given:  # characters left out or replaced ('/' too): two settings could meet
        settings = f"{settings}..{digest}"
    top = run / EVAL / task
    if path.is_file() and not in_checkpoints(path):  # checkpoint files side by side in a folder: one each
        top = top / path.stem
    return top, step, earlier, settings


def eval_dir(checkpoint: str | Path, task: str, overrides: list[str]) -> Path:
    """Where `repre eval TASK` keeps its result and pictures when no --out is given: RUN/eval/TASK/ for the run's
    newest checkpoint (last.pt) measured with the run's settings, else a folder under it, so that no result
    replaces another one's: step-NNNNNNNN/ for an earlier checkpoint, then one named by the `--set` items that
    change what is measured (`measured_otherwise`; brackets, quotes and spaces left out and '/' and other
    characters a shell reads written '_', the name then ending in the settings' hash, as a long name shortened
    does). A checkpoint file outside a run's checkpoints/ keeps its results in FOLDER/eval/TASK/NAME/ (NAME: the
    file's name without .pt)."""
    top, step, earlier, settings = _eval_location(checkpoint, task, overrides)
    out = top / step_name(step) if earlier and step is not None else top
    return out / settings if settings else out


def move_superseded_result(checkpoint: str | Path, task: str, overrides: list[str]) -> None:
    """Before the result of the run's newest checkpoint goes to its `eval_dir`: a result there of another step
    (the newest when it was evaluated; the run has gone on since) moves with its pictures to the folder
    `eval_dir` gives that step, unless that folder holds a result already."""
    top, step, earlier, settings = _eval_location(checkpoint, task, overrides)
    folder = top / settings if settings else top
    was = (read_json(folder / RESULT).get("checkpoint") or {}).get("step")
    if earlier or step is None or not isinstance(was, int) or was == step:
        return
    kept = top / step_name(was) / settings if settings else top / step_name(was)
    if (kept / RESULT).exists():
        return
    kept.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.is_file():
            path.rename(kept / path.name)


def write_result(out: Path, result: dict[str, Any]) -> Path:
    """`result` (evaluate()'s dict) as `out`/result.json."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULT
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def run_results(run: Path, every: bool = False) -> list[dict[str, Any]]:
    """Each `repre eval` result kept in `run`/eval/TASK/ (the run's last checkpoint measured with its settings),
    by task name; `every`: also those of other checkpoints and settings in the folders under them (`eval_dir`).
    Unreadable files are left out. A result written before repre recorded which checkpoint it evaluated has no
    `checkpoint`."""
    results = []
    for path in sorted(Path(run, EVAL).glob(f"**/{RESULT}" if every else f"*/{RESULT}")):
        result = read_json(path)
        if result:
            results.append({**result, "task": result.get("task", path.relative_to(Path(run, EVAL)).parts[0])})
    return results
