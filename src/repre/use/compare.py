"""`repre compare`: runs side by side. For each run what it reports (its summary, or the last train line of a run
still going or killed; the k-NN during and after training; each `repre eval` result kept in it), then the config
keys on which the runs differ.

The first run is the reference: the others' numbers carry their difference to it (a ratio for speed and time),
so a RePre run given after its baseline reads as RePre's gain and cost. With `seeds`, the runs of one setting
over several seeds are one column: each number their mean ± standard deviation, read against the first
column's, paired by seed where the two columns hold the same seeds. Only the runs' files are read: no
torch, and a config that this repre would refuse still compares (read as it was written, in today's keys).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repre.config import RUN_ONLY_KEYS, Config, flatten, idle_sections, parse_overrides, read_written, read_yaml, reads
from repre.config.migrate import REMOVED
from repre.config.schema import EVAL_TASKS
from repre.core import run_files
from repre.core.eval_results import measured_otherwise, run_results
from repre.core.run_files import metric_lines, read_json, run_dir, short_names
from repre.errors import UserError
from repre.use.tables import RENDERERS, Part

log = logging.getLogger("repre")

SEED_KEYS = ("train.seed",)  # what `seeds` groups runs over
# a preset's prose, not a setting: the `preset` key names it, and `--set` leaves it as the preset wrote it (a
# folder run from a Fashion-MNIST preset still says "Fashion-MNIST")
PROSE = ("description",)


def compare(runs: list[str | Path], seeds: bool = False) -> dict[str, Any]:
    """{"command": "compare", "runs": [what each run reports], "differences": {config key: [value per run]},
    "columns": [[run indices] per column of the table]}. A framework's own keys (method.NAME.*) count for the
    runs of that framework alone (null for the others). A column is a run, or with `seeds` the runs whose
    configs differ in `SEED_KEYS` and run-only keys alone (`seed_groups`)."""
    folders = [_run_folder(r) for r in runs]
    configs = [own_keys(run_config(f)) for f in folders]
    shown = [_mapping_keys(c) for c in configs]  # model.kwargs.embed_dim: the part of a mapping that differs
    keys = [item for key in flatten(Config().to_dict()) for item in _below(key, shown)]
    keys = [k for k in keys if k not in PROSE and any(c.get(k) is not None for c in shown)]
    keys += sorted({k for c in shown for k in c} - set(keys) - set(PROSE))  # keys of older repres, none of today's
    differences = {key: [c.get(key) for c in shown] for key in keys
                   if len({json.dumps(c.get(key), sort_keys=True) for c in shown}) > 1}
    if len({f.resolve() for f in folders}) < len(folders):
        log.warning("%s: the same run given twice (a folder and its checkpoint, or a link): its columns agree by "
                    "construction", ", ".join(str(r) for r in runs))
    records = [run_record(f, c) for f, c in zip(folders, configs, strict=True)]
    columns = seed_groups(configs) if seeds else [[i] for i in range(len(records))]
    for column in columns:
        seen = [records[i]["seed"] for i in column]
        if len(set(map(str, seen))) < len(seen):
            log.warning("%s: runs of the same seed in one column (seeds %s): their spread is not the seeds' (a copy "
                        "of a run, or a seed not set?)", ", ".join(str(runs[i]) for i in column), seen)
    return {"command": "compare", "runs": records, "differences": differences, "columns": columns}


# the config keys whose value is a mapping (model.kwargs): `compare` shows each of its items as a key
MAPPING_ITEMS = tuple(f"{k}." for k, v in flatten(Config().to_dict()).items() if isinstance(v, dict))


def _mapping_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A flat config with each mapping value (model.kwargs) as a key per item, as --set writes them
    (model.kwargs.embed_dim): two runs' kwargs that differ in one item show that item, not two long texts."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):  # {}: no item
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            out[key] = value
    return out


def _below(key: str, configs: list[dict[str, Any]]) -> list[str]:
    """`key`, or where the configs give it as a mapping the keys of its items (sorted): the rows in its place."""
    items = sorted({k for c in configs for k in c if k.startswith(f"{key}.")})
    return items if items else [key]


def seed_groups(configs: list[dict[str, Any]]) -> list[list[int]]:
    """The runs' indices grouped by their configs but for the seed and the run-only keys (runs of one setting
    over several seeds), each group where its first run is."""
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        setting = {k: v for k, v in config.items() if k not in SEED_KEYS and k not in RUN_ONLY_KEYS}
        groups.setdefault(json.dumps(setting, sort_keys=True, default=str), []).append(i)
    return list(groups.values())


# what the k-NN during pre-training measures with (its subsets are run-only for every other result)
QUICK_KNN = ("eval.knn.k", "eval.knn.temperature", "eval.knn.quick_train", "eval.knn.quick_test")


def measure_settings(config: dict[str, Any], task: str, given: Sequence[str] = (), quick: bool = False,
                     ) -> dict[str, Any]:
    """The config values that decide what an evaluation of `task` measures: the images (data.name, data.root,
    data.source, the split), its eval section (but for its run-only keys) and the task's own keys outside it
    (`repre.config.reads.EVAL_TASK`), without the keys `given` by `--set` (a result's label names those). Where
    two runs' settings are the same, their results differ by the encoders alone."""
    images = ["data.name", "data.root", "data.source", "eval.split"]
    images += ["eval.val_size"] if config.get("eval.split") == "val" else []
    if config.get("data.name") == "synthetic":  # generated: the images are made from these
        images += ["data.synthetic_train", "data.synthetic_test", "data.synthetic_classes", "data.image_size"]
    if quick:
        keys = [*QUICK_KNN, *images]
    else:
        own = [k for k in config if k.startswith(f"eval.{task}.") and k not in RUN_ONLY_KEYS]
        # the task's own keys outside eval.* (finetune's crops)
        read = [r for r in reads.EVAL_TASK.get(task, ()) if not r.endswith(".")]
        keys = [*own, *read, *images]
    set_keys = set(flatten(parse_overrides(list(given))))
    return {k: config.get(k) for k in keys if k not in set_keys}


def _run_folder(path: str | Path) -> Path:
    """The run of an argument: a run directory, or a checkpoint file in its checkpoints/ (which stands for its
    run: the run's reports are compared, not that checkpoint's)."""
    given = Path(path)
    if not given.exists():
        raise UserError(f"{path} does not exist; give run directories that `repre pretrain --out` wrote")
    if given.is_file() and given.suffix != ".pt":
        raise UserError(f"{path} is a file, not a run directory or a checkpoint (.pt)")
    folder = run_dir(given).resolve()
    if not (folder / run_files.CONFIG).is_file():
        raise UserError(f"{path} is not a run directory (no config.yaml in {folder}); give folders that "
                        "`repre pretrain --out` wrote, or their checkpoints")
    return folder


def run_config(folder: Path) -> dict[str, Any]:
    """A run's config.yaml, flat (key -> value), in today's keys over today's defaults (a removed key: the value
    the code has now, so that a run trained with another shows it); not validated."""
    path = folder / run_files.CONFIG
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"), str(path))  # as the run read it (1e-3 a number)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({str(exc).splitlines()[0]})") from None
    now = {**flatten(Config().to_dict()), **{key: value for key, (value, _) in REMOVED.items()}}
    return {**now, **flatten(read_written(raw, refuse_removed=False)[0])}


def own_keys(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the keys its run did not read set to None: the other frameworks' (method.NAME.* of a NAME
    that did not run), and method.momentum of a method without an EMA."""
    others = idle_sections(str(config.get("method.name")))
    return {k: (None if k.startswith(others) else v) for k, v in config.items()}


def run_record(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """What a run reports: its summary.json (a run still going or killed without one, or resumed since it was
    written: its last train line) and its k-NN evaluations by step (`knn`: [step, top-1, quick]; quick: on the
    periodic subsets), then its `repre eval` results, each with the settings that decide what it measures
    (`measure_settings`). `loss_recon` is None for a run without the branch. `train_s`: the steps over
    every resumed part (`wall_s`: the last part's process)."""
    method, recon = config["method.name"], bool(config["recon.enabled"])
    summary = _summary(folder)
    lines = metric_lines(folder)
    last: dict[str, Any] = next((line for line in reversed(lines) if line.get("kind") == "train"), {})
    if last.get("step", 0) > summary.get("steps", 0):  # resumed after the summary was written
        summary = {}
    knn = [[line["step"], line["knn_top1"], bool(line.get("knn_quick"))] for line in lines
           if line.get("kind") == "eval" and line.get("knn_top1") is not None]
    evaluations = []
    for r in run_results(folder, every=True):
        given = (r.get("checkpoint") or {}).get("set", [])
        evaluations.append({"task": r["task"], "metric": r.get("metric"), "value": r.get("value"),
                            "step": (r.get("checkpoint") or {}).get("step"), "set": given,
                            "settings": measure_settings(config, r["task"], given)})
    return {
        "run": str(folder),
        "method": method,
        "seed": config.get("train.seed"),
        "recon": recon,
        "completed": summary.get("completed"),  # None: no summary (running, killed, or resumed since)
        "diverged": summary.get("diverged"),  # stopped by train.max_bad_steps non-finite steps in a row
        "steps": summary.get("steps", last.get("step")),
        # without a summary: the length its config gives in steps (one in epochs needs the data's size)
        "total_steps": summary.get("total_steps", config.get("train.max_steps") or None),
        "device": summary.get("device"),  # where it trained, in which precision, on how many processes
        "precision": summary.get("precision"),
        "processes": summary.get("processes"),
        "train_s": summary.get("train_s"),
        "compile_s": summary.get("compile_s") or None,  # train.compile's first steps (none: an eager run)
        "wall_s": summary.get("wall_s"),
        "images_per_sec": summary.get("images_per_sec", last.get("images_per_sec")),  # else the last window's
        "loss_contrastive": summary.get("loss_contrastive", last.get("loss_contrastive")),
        "loss_recon": summary.get("loss_recon", last.get("loss_recon")) if recon else None,
        "knn_top1": summary.get("knn_top1"),
        "knn": knn,
        "knn_settings": measure_settings(config, "knn"),
        "knn_quick_settings": measure_settings(config, "knn", quick=True),
        "evaluations": evaluations,
    }


SUMMARY_NUMBERS = ("steps", "total_steps", "train_s", "compile_s", "wall_s", "images_per_sec", "loss_contrastive",
                   "loss_recon", "knn_top1", "processes")


def _summary(folder: Path) -> dict[str, Any]:
    """The run's summary.json, or {} (read as a run without one, with a warning) where a value compare reads is
    not of its type (a damaged or hand-edited file)."""
    path = folder / run_files.SUMMARY
    summary = read_json(path)
    wrong = [k for k in SUMMARY_NUMBERS if summary.get(k) is not None
             and (isinstance(summary[k], bool) or not isinstance(summary[k], (int, float)))]
    wrong += [k for k in ("completed", "diverged") if summary.get(k) is not None and not isinstance(summary[k], bool)]
    if wrong:
        log.warning("%s is damaged (%s): read as a run without a summary (its last train line)", path,
                    ", ".join(f"{k}: {summary[k]!r}" for k in wrong))
        return {}
    return summary


# ------------------------------------------------ the table's rows and cells (`use.tables` draws it)


@dataclass
class Row:
    """A row of the table: its label, a value per run, and how a column's values (those of its runs) read
    against the first column's (None where there is nothing to read them against)."""

    label: str
    values: list[Any]
    fmt: Callable[[list[Any], list[Any] | None], str]
    same_method: bool = False  # read against the first column's only where the methods are the same (losses)
    settings: list[Any] | None = None  # what each run's value measured (evaluations): read against the first
    # column's only where the same


def table(result: dict[str, Any], fmt: str = "text") -> str:
    """The runs (or groups of seeds: `compare`'s columns) as columns, what they report as rows, then the config
    keys that differ: aligned text (long texts cut in their middle), a Markdown table or a LaTeX tabular
    (booktabs), whole."""
    runs, columns = result["runs"], result.get("columns") or [[i] for i in range(len(result["runs"]))]
    names = column_names([r["run"] for r in runs], columns)
    report = report_rows(runs)
    differing = [Row(key, values, _given if key.startswith(MAPPING_ITEMS) else _plain)
                 for key, values in result["differences"].items()]
    cells = [[_cell(row, runs, columns, c) for c in range(len(columns))] for row in report + differing]
    parts = [Part(None if report else "nothing reported yet: no summary.json, train line or evaluation",
                  [row.label for row in report], cells[:len(report)])]
    if len(runs) > 1:
        parts.append(Part("config keys that differ:" if differing else "the runs' configs are the same",
                          [row.label for row in differing], cells[len(report):]))
    return RENDERERS[fmt](names, parts)


def column_names(paths: list[str], columns: list[list[int]]) -> list[str]:
    """A column's name: its run's `short_names`; a group of runs (seeds), the folder holding them all when that
    tells the groups apart (runs/base/seed0, runs/base/seed1 -> base), else its first run's, with "x N runs"."""
    if all(len(c) == 1 for c in columns):
        return short_names(paths)
    parents = [os.path.commonpath([str(Path(paths[i]).resolve()) for i in c]) for c in columns]
    every = [Path(p).resolve() for p in paths]
    apart = len(set(parents)) == len(parents) and all(  # each holds its own runs alone
        sum(Path(p).is_relative_to(parent) for p in every) == len(c)
        for parent, c in zip(parents, columns, strict=True))
    names = short_names(parents if apart else [paths[c[0]] for c in columns])
    # a run alone beside groups: with the folder that holds it (repre/seed0), as the groups are named by theirs
    names = [name if len(c) > 1 or "/" in name else "/".join(Path(paths[c[0]]).resolve().parts[-2:])
             for name, c in zip(names, columns, strict=True)]
    return [name + (f" x {len(c)} runs" if len(c) > 1 else "") for name, c in zip(names, columns, strict=True)]


def _cell(row: Row, runs: list[dict[str, Any]], columns: list[list[int]], c: int) -> str:
    values = [row.values[i] for i in columns[c]]
    text = row.fmt(values, _reference(row, runs, columns, c))
    if _measured_otherwise(row, columns, c) and _has(values) and _has([row.values[i] for i in columns[0]]):
        text += " (other settings)"
    return text


def _has(values: list[Any]) -> bool:
    return any(v is not None for v in values)


def _settings(row: Row, members: list[int]) -> str | None:
    """What a column's values measured (the settings of its runs that have a value, as one text; "" where none
    has), or None when its runs measured differently. A run without the result measured nothing otherwise."""
    assert row.settings is not None  # read for the rows of evaluations alone (`_measured_otherwise`)
    texts = {json.dumps(row.settings[i], sort_keys=True, default=str) for i in members if row.values[i] is not None}
    return (texts.pop() if len(texts) == 1 else None) if texts else ""


def _measured_otherwise(row: Row, columns: list[list[int]], c: int) -> bool:
    """Whether column c's values of an evaluation were measured with other settings than the first column's
    (or its own runs' with different ones)."""
    if not row.settings or c == 0:
        return False
    mine = _settings(row, columns[c])
    return mine is None or mine != _settings(row, columns[0])


class Paired(list):
    """The first column's values in the order of another column's runs, matched by their seeds."""


def _reference(row: Row, runs: list[dict[str, Any]], columns: list[list[int]], c: int) -> list[Any] | None:
    """The first column's values that column c's are read against (None for the first column itself, a loss
    of another method, an evaluation measured otherwise): `Paired` with c's runs where both columns hold the
    same seeds, each once."""
    method = runs[columns[c][0]]["method"]  # a column's runs share their config but for the seed
    if c == 0 or (row.same_method and method != runs[columns[0][0]]["method"]) or _measured_otherwise(row, columns, c):
        return None
    first = [row.values[i] for i in columns[0]]
    mine, theirs = [runs[i]["seed"] for i in columns[c]], [runs[i]["seed"] for i in columns[0]]
    if len(mine) > 1 and len(set(mine)) == len(mine) and sorted(map(str, mine)) == sorted(map(str, theirs)):
        by_seed = dict(zip(map(str, theirs), first, strict=True))
        return Paired(by_seed[str(seed)] for seed in mine)
    return first


def report_rows(runs: list[dict[str, Any]]) -> list[Row]:
    """The rows of what the runs report, those where some run has a value."""
    stepped = any(r["steps"] is not None for r in runs)
    rows = [
        Row("steps", [_steps(r, stepped) for r in runs], _text),
        Row("trained on", [_trained_on(r) for r in runs], _text),
        Row("images/s", [r["images_per_sec"] for r in runs], _ratio),
        Row("training time", [r["train_s"] for r in runs], _duration),
        Row("compile time", [r["compile_s"] for r in runs], _duration),
        Row("loss_contrastive (last)", [r["loss_contrastive"] for r in runs], _difference, same_method=True),
        Row("loss_recon (last)", [r["loss_recon"] for r in runs], _difference, same_method=True),
        Row("knn top-1 (run's end)", [r["knn_top1"] for r in runs], _difference,
            settings=[r["knn_settings"] for r in runs]),
        Row("knn top-1 (quick, best)", [_best_quick(r) for r in runs], _text,
            settings=[r["knn_quick_settings"] for r in runs]),
    ]
    labels: dict[str, dict[int, Any]] = {}
    order: dict[str, tuple] = {}  # a label's place: by task, then its own settings' first, then by step
    for i, r in enumerate(runs):
        for e in r["evaluations"]:
            name = label = _evaluation_label(e, r)
            n = 1
            while i in labels.get(label, {}):  # a second result of the run with the same name: numbered
                n += 1
                label = f"{name} ({n})"
            labels.setdefault(label, {})[i] = (e["value"], e["settings"])
            task = EVAL_TASKS.index(e["task"]) if e["task"] in EVAL_TASKS else len(EVAL_TASKS)
            order.setdefault(label, (task, e["task"], "[" in label, " @" in name, e["step"] or 0, label))
    rows += [Row(label, [by_run[i][0] if i in by_run else None for i in range(len(runs))], _difference,
                 settings=[by_run[i][1] if i in by_run else None for i in range(len(runs))])
             for label, by_run in sorted(labels.items(), key=lambda item: order[item[0]])]
    return [row for row in rows if any(v is not None for v in row.values)]


def _evaluation_label(e: dict[str, Any], r: dict[str, Any]) -> str:
    """"eval linear top1 [epochs=2] @400": the task, its metric, the `--set` that change what it measured, and
    the checkpoint, unless the end of a completed run: a row holds results of one checkpoint, read against each
    other (a run's result at its end against another's at step 400 differed by the training between them)."""
    given = [s.removeprefix(f"eval.{e['task']}.")  # the task is named; how it ran gives the same result
             for s in sorted(measured_otherwise(list(map(str, e["set"])), e["task"]))]  # in any order: one row
    at = "" if e["step"] is None or (r["completed"] and e["step"] == r["total_steps"]) else f" @{e['step']}"
    return f"eval {e['task']} {e['metric']}" + (f" [{', '.join(given)}]" if given else "") + at


def _steps(r: dict[str, Any], others: bool = True) -> str | None:
    """"600/800 no summary"; a run killed before its first train line: "no summary" where `others` (some run
    reports steps; else the row is left out: nothing reported yet)."""
    if r["steps"] is None:
        return "no summary" if others and r["completed"] is None else None
    state = " diverged" if r.get("diverged") else {True: "", False: " stopped", None: " no summary"}[r["completed"]]
    return f"{r['steps']}" + (f"/{r['total_steps']}" if r["total_steps"] not in (None, r["steps"]) else "") + state


def _trained_on(r: dict[str, Any]) -> str | None:
    """"cpu fp32", "cuda:0 bf16 x8": what the speed row is a speed of."""
    if r["device"] is None:
        return None
    return f"{r['device']} {r['precision']}" + (f" x{r['processes']}" if (r["processes"] or 1) > 1 else "")


def _best_quick(r: dict[str, Any]) -> str | None:
    quick = [(top1, step) for step, top1, is_quick in r["knn"] if is_quick]
    if not quick:
        return None
    top1, step = max(quick)
    return f"{top1:.4f} @{step}"


@dataclass(frozen=True)
class Spread:
    """A column's numbers: their mean, sample standard deviation and count, of `runs` runs."""

    mean: float
    std: float
    n: int
    runs: int

    @classmethod
    def of(cls, values: list[Any] | None) -> Spread | None:
        """None where no run has a number."""
        numbers = [float(v) for v in values or [] if isinstance(v, (int, float))]
        if not numbers:
            return None
        mean = sum(numbers) / len(numbers)
        var = sum((x - mean) ** 2 for x in numbers) / (len(numbers) - 1) if len(numbers) > 1 else 0.0
        return cls(mean, var ** 0.5, len(numbers), len(values or []))

    def text(self, scale: float = 1.0, digits: int = 4, unit: str = "") -> str:
        """"0.6514" for one run; "0.6514 ± 0.0031" for several; "(n=2)" where fewer runs than the column's
        have one."""
        text = f"{self.mean / scale:.{digits}f}" + (f" ± {self.std / scale:.{digits}f}" if self.n > 1 else "") + unit
        return text + (f" (n={self.n})" if self.n < self.runs else "")


def _text(values: list[Any], first: Any) -> str:
    """Texts: the one they share, else each (a column of several runs)."""
    texts = list(dict.fromkeys(v for v in values if v is not None))
    return ", ".join(texts) if texts else "-"


def _given(values: list[Any], first: Any) -> str:
    """An item of a mapping (model.kwargs.depth): as `_plain`, "-" where a run's mapping does not give it."""
    return _plain([v for v in values if v is not None], first) if _has(values) else "-"


def _plain(values: list[Any], first: Any) -> str:
    """A config value as --set would write it, exactly: 0.00015, 1e-06, true, null, [2, 5] (a column of several
    runs: each value they have)."""
    return ", ".join(dict.fromkeys(v if isinstance(v, str) else json.dumps(v) for v in values))


def _difference(values: list[Any], first: list[Any] | None) -> str:
    """The values' mean (± std) and its difference to the first column's: paired by seed where `first` is
    `Paired` (the mean ± std of the runs' differences to their seed's run), else the difference of the means."""
    here, there = Spread.of(values), Spread.of(first)
    if here is None:
        return "-"
    if isinstance(first, Paired):
        gaps = Spread.of([v - f for v, f in zip(values, first, strict=True)
                          if isinstance(v, (int, float)) and isinstance(f, (int, float))])
        if gaps is not None:
            n = f", n={gaps.n}" if gaps.n < here.n else ""  # pairs fewer than the runs with a value
            spread = f" ± {gaps.std:.4f}" if gaps.n > 1 else ""  # one pair has none
            return here.text() + f" ({_signed(gaps.mean)}{spread} paired{n})"
    return here.text() + (f" ({_signed(here.mean - there.mean)})" if there else "")


def _signed(gap: float) -> str:
    """"+0.0123", "-0.0123"; a gap that rounds to zero is "+0.0000" (no "-0.0000")."""
    text = f"{gap:+.4f}"
    return "+0.0000" if text == "-0.0000" else text


def _ratio(values: list[Any], first: list[Any] | None) -> str:
    here, there = Spread.of(values), Spread.of(first)
    if here is None:
        return "-"
    return here.text(digits=1) + (f" (x{here.mean / there.mean:.2f})" if there and there.mean else "")


def _duration(values: list[Any], first: list[Any] | None) -> str:
    here, there = Spread.of(values), Spread.of(first)
    if here is None:
        return "-"
    # the unit where the mean shows as at least 1 of it (59.96 s is "1.0 min", not "60 s")
    if round(here.mean / 60, 1) >= 60:
        text = here.text(3600, 2, " h")
    elif round(here.mean, 1) >= 59.95:
        text = here.text(60, 1, " min")
    else:
        text = here.text(1, 0 if round(here.mean, 1) >= 10 else 1, " s")
    return text + (f" (x{here.mean / there.mean:.2f})" if there and there.mean else "")
