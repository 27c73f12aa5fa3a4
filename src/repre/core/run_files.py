"""A run directory's layout and records, read without torch: which run a checkpoint argument names
(`run_dir`), which step a checkpoint is, what a folder holds and whether `--out` may take a run, summary.json,
metrics.jsonl's lines. Where `repre eval` keeps its results: `repre.core.eval_results`.

    RUN/config.yaml        the resolved config the run trains with (`--resume` reads it)
    RUN/metrics.jsonl      a line per logged window and evaluation
    RUN/tb/                TensorBoard's event files
    RUN/checkpoints/       step-NNNNNNNN.pt (each with a .sha256), last.pt (the newest, the same file)
    RUN/summary.json       the run's result, written when it ends
    RUN/recon.png          the reconstructions of its last step (RePre)
    RUN/eval/TASK/         `repre eval TASK`'s result.json (and pictures) for the run's last checkpoint
                           measured as the run's config says; under it, step-N/ for another checkpoint and
                           a folder named by the --set items for other settings (`eval_results.eval_dir`)
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from repre.errors import UserError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
TB = "tb"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
SUMMARY = "summary.json"
RECON_PNG = "recon.png"
EVAL = "eval"
_STEP_FILE = re.compile(r"step-(\d{8})\.pt")  # a step checkpoint's name (`step_name`, `step_of`)
RESULT = "result.json"


# what a folder holds, as `folder_kind` tells: nothing there, no visible file, only a run's start (a config and
# an empty TensorBoard folder: a run that failed before its first logged step), a run, or files of something else
FolderKind = Literal["absent", "empty", "started", "run", "foreign"]
STARTED = {CONFIG, TB}  # what a run writes before its first logged step
RUN_NAMES = {CONFIG, TB, CHECKPOINTS, METRICS}  # what only a run writes


def folder_kind(folder: str | Path) -> FolderKind:
    """What `folder` holds (`FolderKind`): the one rule of what counts as a run directory, for `--out`'s check
    and the run lock. Hidden files (the lock) are not counted."""
    folder = Path(folder)
    if not folder.is_dir():
        return "absent"
    names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    if not names:
        return "empty"
    if not names & RUN_NAMES:
        return "foreign"
    return "started" if names <= STARTED else "run"


def in_checkpoints(path: str | Path) -> bool:
    """Whether a file sits in a run's checkpoints/ folder (`last.pt` given from inside it too)."""
    return Path(path).absolute().parent.name == CHECKPOINTS


def run_dir(path: str | Path) -> Path:
    """The run directory of a checkpoint argument: the directory itself, the run above its checkpoints/ folder
    (given for its last.pt) or above checkpoints/NAME.pt (a file elsewhere: its folder)."""
    path = Path(path)
    if path.is_dir():
        return path.absolute().parent if path.absolute().name == CHECKPOINTS and (path / LAST).exists() else path
    return path.absolute().parent.parent if in_checkpoints(path) else path.parent


def checksum_file(checkpoint: Path) -> Path:
    """The sidecar holding a checkpoint file's SHA-256 and size (NAME.pt.sha256)."""
    return checkpoint.with_name(checkpoint.name + ".sha256")


def step_name(step: int) -> str:
    """The name of step `step`'s checkpoint, without ".pt" (and of the folder of its evaluation results):
    "step-00000200"."""
    return f"step-{step:08d}"


def step_of(name: str) -> int | None:
    """The step a checkpoint file's name holds ("step-00000200.pt" -> 200), None for any other name."""
    match = _STEP_FILE.fullmatch(name)
    return int(match.group(1)) if match else None


def checkpoint_step(checkpoint: str | Path) -> int | None:
    """The step of the run's step-N.pt that a checkpoint argument names: the file itself (through a symlink or
    a relative path), or the one last.pt is (a hard link, or a copy with the same recorded checksum); a run
    directory names its last.pt. None for a file outside a run's checkpoints/ or one no step file matches."""
    path = Path(checkpoint).resolve()
    if path.is_dir():
        path = path / CHECKPOINTS / LAST
    if not in_checkpoints(path) or not path.is_file():
        return None
    if (own := step_of(path.name)) is not None:
        return own
    recorded = checksum_file(path).read_text() if checksum_file(path).is_file() else None
    for step_file in sorted(path.parent.glob("step-*.pt"), reverse=True):
        side = checksum_file(step_file)
        if step_of(step_file.name) is None:
            continue
        if os.path.samefile(step_file, path) or (recorded and side.is_file() and side.read_text() == recorded):
            return step_of(step_file.name)
    return None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when there is none or it is not one."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def completed_summary(run: Path, step: int) -> dict[str, Any] | None:
    """The run's summary.json where it says the run completed at `step` (a command requeued after the run's end:
    nothing is redone), else None (one cut short reads as none: the end is redone)."""
    stored = read_json(run / SUMMARY)
    return stored if stored.get("completed") and stored.get("steps") == step else None


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


def short_names(paths: list[str]) -> list[str]:
    """The fewest trailing parts that tell the runs apart: runs/a/seed0, runs/b/seed0 -> a/seed0, b/seed0."""
    parts = [Path(p).resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(Path(p).resolve()) for p in paths]  # the same run given twice


def similar_runs(out: Path) -> list[str]:
    """The folders beside `out` with checkpoints and a name like its own (basline beside baseline): what a
    mistyped --out meant. Names that differ in their digits alone (seed0, seed1) are other runs on purpose."""
    def letters(name: str) -> str:
        return re.sub(r"\d", "", name)

    try:
        runs = [p.name for p in out.parent.iterdir() if p.name != out.name and (p / CHECKPOINTS).is_dir()
                and letters(p.name) != letters(out.name)]
    except OSError:
        return []
    return difflib.get_close_matches(out.name, runs, n=2, cutoff=0.8)


def check_out(out: Path, resume: bool) -> None:
    """Whether `out` may take the run (the trainer creates it once the data and the model are built, so that a
    wrong setting leaves no empty directory): one with a run in it is refused unless the run resumes, and one
    holding other files always (a run would be written among them). A run that failed before its first logged
    step (a wrong setting found when the data loader starts) left only its config and an empty TensorBoard
    folder: the retry may use the directory."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    kind = folder_kind(out)
    if kind == "foreign":
        names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(f"--out {out} holds files that are not a repre run ({shown}); choose a new or empty "
                        "directory for --out")
    if kind == "run" and not resume:
        raise UserError(
            f"--out {out} holds a run; add --resume to continue it, or choose another --out"
        )
