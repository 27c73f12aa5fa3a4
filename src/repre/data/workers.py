"""How many data workers a loader starts (`train.num_workers`, its -1 resolved from this process's share of
the cores, and counts that would exhaust the memory refused), and how a worker starts (`worker_started`)."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import signal

from repre.core import dist, launch
from repre.core.compat import stop_live_loader_workers
from repre.errors import UserError

log = logging.getLogger("repre")

# data workers per core: more are said to be many (room for loading that waits on a network disk), and past the
# most refused (each a process with its own memory: 1,000 on 2 cores hung a run until the memory ran out)
MANY_WORKERS_PER_CORE, MOST_WORKERS_PER_CORE = 4, 64


def resolve_workers(requested: int) -> int:
    """-1 -> min(8, this process's share of the cores - 1), leaving a core to its training loop. The share:
    the cores it may run on, divided among the processes torchrun started on the node, which all see the same
    cores (the official MoCo v3 divides its workers so too); 8 GPU processes on 64 cores get 7 workers each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // launch.local_world_size())
    chosen = max(0, min(8, share - 1))
    if requested > MOST_WORKERS_PER_CORE * share:
        raise UserError(f"train.num_workers={requested} on {share} core(s): each data worker is a process with its "
                        f"own memory, and so many would exhaust it before the first step; --set "
                        f"train.num_workers=-1 chooses {chosen} here (allowed with --resume)")
    if requested > MANY_WORKERS_PER_CORE * share and dist.is_main():
        _warn_many_workers(requested, share, chosen)
    workers = requested if requested >= 0 else chosen
    if workers:
        _stop_workers_at_exit()
    return workers


@functools.cache  # once a process: each loader asks
def _warn_many_workers(requested: int, share: int, chosen: int) -> None:
    log.warning("train.num_workers=%d on %d core(s): more workers than loading can use unless it waits on a slow "
                "disk; --set train.num_workers=-1 chooses %d here", requested, share, chosen)


@functools.cache  # registered once a process, after multiprocessing's own exit handler: it runs before that one
def _stop_workers_at_exit() -> None:
    """At the interpreter's exit, stop the workers of the loaders still alive (one an exception's traceback
    kept: Ctrl-C in a script calling `repre.pretrain`). multiprocessing's exit handler sends them SIGTERM, which
    they ignore (`worker_started`), and then waits for them: the process never ended."""
    atexit.register(stop_live_loader_workers)


def worker_started(_: int) -> None:
    """A data worker's `worker_init_fn`: SIGINT, SIGTERM and SIGHUP ignored. Ctrl-C, Slurm's scancel, `timeout`
    and a closed terminal signal the whole process group; the main process then ends its step, writes a
    checkpoint and stops (`GracefulStop`), reading batches until then, where a worker the signal killed ended the
    run with PyTorch's "DataLoader worker is killed by signal" and no checkpoint. The workers end with the main
    process, as ever (PyTorch's loader stops them, or they see it gone)."""
    for sig in ("SIGINT", "SIGTERM", "SIGHUP"):  # Windows has no SIGHUP
        if hasattr(signal, sig):
            signal.signal(getattr(signal, sig), signal.SIG_IGN)

