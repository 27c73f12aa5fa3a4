"""`pretrain()`: the trainer with the evaluations a run reports, as the `repre pretrain` command runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repre.config import Config
from repre.core import dist
from repre.engine.trainer import Trainer
from repre.eval.callbacks import run_callbacks


def pretrain(cfg: Config, out: str | Path, resume: bool = False, init_from: str | Path | None = None) -> dict[str, Any]:
    """Pre-train per `cfg` into `out`; returns the summary (also written to out/summary.json). `init_from`: a
    checkpoint (or run directory) whose model weights start this run, unless `resume` finds a checkpoint.

    Raises `StoppedEarly` (its message: the summary JSON) when interrupted; the run can be resumed.
    Under torchrun (WORLD_SIZE > 1) every process calls it: it joins the process group, trains its share of
    each global batch, and leaves the group at the end.
    """
    with dist.group_scope():  # the trainer joins the group (under torchrun); it is left here
        return Trainer(cfg, Path(out), resume, init_from, callbacks=run_callbacks(cfg)).fit()
