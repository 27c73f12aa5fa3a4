"""Files written whole or not at all: a temporary file beside the target, renamed over it once complete (a
process stopped while writing leaves the old file, or none). Checkpoints add an fsync and a checksum
(`repre.core.checkpoint_io`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to: renamed over `path` when the block ends, removed if it
    raises. It lies in the same folder (a rename within one filesystem is atomic), is hidden, names this
    process (two processes writing one file do not share it) and keeps `path`'s suffix last (writers such as
    numpy's and safetensors' pick their format by it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
