"""The seeds a run derives from train.seed, and the global random state of its processes as a checkpoint keeps
it. Each process draws its own numbers (drop path differs per process), so a checkpoint holds every process's
state and each takes its own back on resume: a resumed run draws what the uninterrupted one would have."""

from __future__ import annotations

import logging
from typing import Any

import torch

from repre.core import dist

log = logging.getLogger("repre")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's image order (the same on every process: each takes its share of one order). The
    large prime keeps the seeds of (seed, epoch) pairs apart for any run length."""
    return seed * 1_000_003 + epoch


def process_seed(seed: int, rank: int) -> int:
    """The seed of one process's own draws (stochastic depth: independent on every process)."""
    return seed * 1_000 + rank


def _own(device: torch.device) -> dict[str, Any]:
    """This process's generators: the CPU's, and the training device's when it is a GPU."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def state_dict(device: torch.device) -> dict[str, Any]:
    """This process's state, and every process's under "ranks" when distributed (a collective)."""
    state: dict[str, Any] = _own(device)
    if dist.is_distributed():
        state["ranks"] = dist.gather_objects(_own(device))
    return state


def load_state_dict(saved: dict[str, Any], device: torch.device) -> None:
    """Take back this process's state from `saved`. Saved with another number of processes: every process keeps
    the state it was seeded with (the trainer seeds each its own) and says so."""
    ranks = saved.get("ranks") or [saved]  # a plain process's and a one-process group's are alike
    if len(ranks) == dist.world_size():
        saved = ranks[dist.rank()]
    else:
        if dist.is_main():
            log.info("resuming with %s, written with %s: the processes' own random draws (stochastic depth, where "
                     "set) continue from new seeds",
                     _processes(dist.world_size()), _processes(len(ranks)))
        saved = _own(device)
    torch.set_rng_state(saved["torch"])
    if torch.is_tensor(saved.get("cuda")) and device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda"], device)


def _processes(count: int) -> str:
    return f"{count} process{'' if count == 1 else 'es'}"
