"""Evaluation of a pre-trained checkpoint: `evaluate(task, checkpoint)` -> {"task", "metric", "value", "extra"}."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from repre.config import EVAL_TASKS, Config, flatten, override_items, parse_overrides
from repre.config.reads import eval_reads, idle_keys, other_tasks
from repre.core import checkpoint_io as ckpt_io
from repre.core import dist, eval_results, launch, run_files
from repre.core.atomic import check_writable
from repre.core.runtime import seeded, setup_runtime
from repre.engine.metrics import add_evaluation
from repre.errors import UserError
from repre.methods import eval_encoder_key
from repre.pretrained import (  # noqa: F401 (load_encoder: the name repre.eval gave before repre.pretrained)
    changed_settings,
    encoder_from,
    load_checkpoint_config,
    load_encoder,
    model_from,
    refuse_unread,
)

log = logging.getLogger("repre")


def encoder_tasks() -> dict[str, Callable[..., dict[str, Any]]]:
    """Evaluations of a frozen or fine-tuned encoder: task -> fn(encoder, cfg, rt, out=None) -> result dict
    ({"task": the task's name, "metric", "value", "extra"}); `out`: the folder for the files a task writes (the
    papers' linear probes' resumable checkpoint, the dense probe's picture), None: none written. A task added
    here also needs its config section (`EvalConfig`) and the steps of docs/architecture.md."""
    from repre.eval.finetune import finetune_eval
    from repre.eval.knn import knn_eval
    from repre.eval.linear import linear_eval
    from repre.eval.segment import segment_eval

    return {"knn": knn_eval, "linear": linear_eval, "finetune": finetune_eval, "segment": segment_eval}


def evaluate(
    task: str, checkpoint: str | Path, overrides: Sequence[str] | None = None, out: str | Path | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run evaluation `task` on a checkpoint or run directory -> {"task", "metric", "value", "extra",
    "checkpoint"} ("checkpoint": which file, step and encoder were evaluated, with which `overrides`);
    pictures go to `out`, and the linear probe's checkpoint (protocols mocov3, dino and moby). Under torchrun every
    process calls it: the linear probe's protocols share the work, the other tasks run whole in each process.

    `keep`: also keep the result as `repre eval` does (`keep_result`), in `out` (default: the run's folder for
    the task, `eval_results.eval_dir`, where `repre compare` and the export card find it)."""
    if task not in EVAL_TASKS:
        raise UserError(f"unknown evaluation {task!r}; choose from {', '.join(EVAL_TASKS)}")
    overrides = override_items(overrides)
    measured = changed_settings(checkpoint, overrides)  # the result's record and folder: the run's own repeated
    out = None if out is None else Path(out).expanduser()  # settings left out
    if keep:
        out = result_folder(checkpoint, task, measured, out, "out")
    with launch.said_by_the_first(task not in SHARES_WORK):  # until the config says whether the work is shared
        result = _evaluate(task, checkpoint, overrides, out, measured)
    if keep and launch.launch_rank() == 0:  # under torchrun one process writes
        assert out is not None  # `result_folder`'s, above
        try:
            keep_result(result, checkpoint, out)
        except OSError as exc:  # a full disk after the work: the result is logged, and returned
            log.warning("the result is not written to %s (%s): %s", out, exc, json.dumps(result))
    return result


# tasks whose torchrun processes may share the work, and whether a run's config has them share it (the linear
# probe's `quick` protocol runs whole in each process); the other tasks run whole in each
SHARES_WORK: dict[str, Callable[[Config], bool]] = {"linear": lambda cfg: cfg.eval.linear.protocol != "quick"}


def result_folder(checkpoint: str | Path, task: str, overrides: list[str], out: str | Path | None,
                  option: str) -> Path:
    """Where a kept result goes: `out`, or the run's folder for the task (`eval_results.eval_dir`), checked
    writable before the work (`option` names it in the error); a result of the run's earlier newest step there
    moves to that step's folder first. Under torchrun the first process checks and moves."""
    folder = Path(out) if out is not None else eval_results.eval_dir(checkpoint, task, overrides)
    if launch.launch_rank() == 0:
        check_writable(folder, option)
        if out is None:
            eval_results.move_superseded_result(checkpoint, task, overrides)
    return folder


def keep_result(result: dict[str, Any], checkpoint: str | Path, out: Path) -> Path:
    """`result` kept as `repre eval` keeps it: `out`/result.json, and a scalar in the run's TensorBoard at the
    checkpoint's step (`add_evaluation`: a result measured as the run's config says) -> the result's file."""
    path = eval_results.write_result(out, result)
    tag = add_evaluation(run_files.run_dir(checkpoint), result)
    if tag:
        log.info("added to the run's TensorBoard: %s at step %s", tag, result["checkpoint"]["step"])
    return path


def _evaluate(task: str, checkpoint: str | Path, overrides: list[str], out: str | Path | None,
              measured: list[str]) -> dict[str, Any]:
    refuse_unread(f"repre eval {task}", overrides, eval_reads(task))
    read = ckpt_io.pinned(checkpoint)  # one file: a run still training replaces its last.pt
    ckpt, cfg = load_checkpoint_config(read, overrides)
    idle = idle_keys(task, cfg.eval.linear.protocol, cfg.eval.segment.data)
    keys = flatten(parse_overrides(overrides))
    given = [k for k in keys if k in idle]
    if given:  # each would change nothing but the name of the result's folder
        raise UserError(f"--set {given[0]}: {idle[given[0]]}; drop it")
    if others := [k for k in keys if k.startswith(other_tasks(task))]:
        raise UserError(f"--set {', '.join(others)}: another evaluation's, not read by `repre eval {task}` (it "
                        f"would change nothing); drop {'it' if len(others) == 1 else 'them'}")
    encoder_key = "encoder" if task == "recon" else eval_encoder_key(cfg.method.name)  # the decoder's: online
    evaluated = {"file": str(read.expanduser().resolve()), "step": int(ckpt.get("step", 0)),
                 "encoder": encoder_key, "set": measured}
    if task == "recon":
        from repre.eval.recon import recon_eval

        if launch.launched():  # it would run whole in every process, each on the first GPU
            raise UserError("repre eval recon runs in one process: run it without torchrun")
        rt = setup_runtime(cfg.train)
        with seeded(cfg.train.seed, rt):  # building the model draws its initial weights
            model = model_from(ckpt, cfg, checkpoint).to(rt.device)
            return {**recon_eval(model, cfg, rt, Path(out) if out else None), "checkpoint": evaluated}
    shared = task in SHARES_WORK and SHARES_WORK[task](cfg)
    with dist.group_scope(), launch.said_by_the_first(not shared):  # joined in the block, left after
        rt = setup_runtime(cfg.train, join_group=True)
        with seeded(cfg.train.seed, rt):  # building the encoder, new heads, drop path: the same result every time
            encoder = encoder_from(ckpt, cfg, checkpoint).to(rt.device)
            result = encoder_tasks()[task](encoder, cfg, rt, Path(out) if out else None)
        if result.get("task") != task:  # the name results are filed, compared and exported under
            raise RuntimeError(f"evaluation {task} returned a result named {result.get('task')!r}")
        return {**result, "checkpoint": evaluated}
