"""What a launcher (torchrun) asked of this process, read from its environment before any process group is
joined. No torch: the CLI reads it before it imports torch (`repre.core.dist` offers the same names)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from repre.errors import UserError


def launched_world_size() -> int:
    """The process count a launcher such as torchrun asked for (WORLD_SIZE), read when called."""
    return _environ_int("WORLD_SIZE", 1)


def launched() -> bool:
    """Whether a launcher asked for a process group: WORLD_SIZE > 1, or torchrun (even with one process, so
    that `torchrun --nproc_per_node 1` runs, and checks, the distributed code path)."""
    return launched_world_size() > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def local_rank() -> int:
    return _environ_int("LOCAL_RANK", 0)


def launch_rank() -> int:
    """This process's rank as its launcher set it (RANK; 0 without one: a RANK left in a shell's environment
    alone would silence the process as another rank), known before the group is joined."""
    return _environ_int("RANK", 0) if launched() else 0


def local_world_size() -> int:
    """The processes a launcher started on this node (torchrun's LOCAL_WORLD_SIZE; 1 without one)."""
    return max(1, _environ_int("LOCAL_WORLD_SIZE", 1))


def check_environment() -> None:
    """Raises UserError where a launcher's variable holds no integer (each is read as the run goes)."""
    for read in (launched_world_size, local_rank, launch_rank, local_world_size):
        read()


def _environ_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text!r} in the environment is not an integer: a launcher (torchrun) sets it for "
                        f"each process it starts; unset it to run one process (`unset {name}`)") from None


@contextlib.contextmanager
def said_by_the_first(alike: bool = True) -> Iterator[None]:
    """Within it, the warnings and notes of work every process does `alike` (reading the config, an evaluation
    each runs whole) come from the launcher's first process alone: the others would repeat each one; their
    errors still show. `alike=False` (work they share, each meeting its own images): every process speaks."""
    log = logging.getLogger("repre")
    if not alike or launch_rank() == 0:
        yield
        return
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
