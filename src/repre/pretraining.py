"""`pretrain()`: the trainer with the evaluations a run reports, as the `repre pretrain` command runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from repre.config import Config, checked
from repre.core import dist
from repre.engine.signals import GracefulStop
from repre.engine.trainer import Trainer
from repre.eval.callbacks import run_callbacks


def pretrain(cfg: Config, out: str | Path, resume: bool = False, init_from: str | Path | None = None) -> dict[str, Any]:
    """Pre-train per `cfg` into `out`; returns the summary (also written to out/summary.json). `init_from`: a
    checkpoint (or run directory) whose model weights start this run, unless `resume` finds a checkpoint.

    `cfg` is checked again as a YAML file would be (its values changed in Python included: a wrong type or
    range raises `UserError` naming the key). The run seeds the global RNG from `train.seed`; the caller's
    state (CPU, and a CUDA device already in use) is put back when it returns or raises.

    Raises `StoppedEarly` (its `summary`; its message: the summary as JSON) when interrupted; the run can be
    resumed. Under torchrun (WORLD_SIZE > 1) every process calls it: it joins the process group, trains its
    share of each global batch, and leaves the group at the end.
    """
    cfg = checked(cfg, "pretrain")
    in_use = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if in_use else []), dist.group_scope():
        # the trainer joins the group (under torchrun); it is left here. A signal while it builds (indexing a large
        # folder, compiling) stops the run before its first step, as one during the loop does
        with GracefulStop() as signal:
            signal.when = "once the run is built, before its first step"  # `Trainer._train` says the steps'
            trainer = Trainer(cfg, Path(out).expanduser(), resume, init_from, callbacks=run_callbacks(cfg),
                              signal=signal)
            return trainer.fit()
