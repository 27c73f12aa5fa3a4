"""What a launcher (torchrun) asked of this process, read from its environment before any process group is
joined. No torch: the CLI reads it before it imports torch (`repre.core.dist` offers the same names)."""

from __future__ import annotations

import os


def launched_world_size() -> int:
    """The process count a launcher such as torchrun asked for (WORLD_SIZE), read when called."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """Whether a launcher asked for a process group: WORLD_SIZE > 1, or torchrun (even with one process, so
    that `torchrun --nproc_per_node 1` runs, and checks, the distributed code path)."""
    return launched_world_size() > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launch_rank() -> int:
    """This process's rank as its launcher set it (RANK; 0 without one), known before the group is joined."""
    return int(os.environ.get("RANK", "0"))


def local_world_size() -> int:
    """The processes a launcher started on this node (torchrun's LOCAL_WORLD_SIZE; 1 without one)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
