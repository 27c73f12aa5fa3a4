"""Files written whole or not at all: a temporary file beside the target, renamed over it once complete (a
process stopped while writing leaves the old file, or none). Checkpoints add an fsync and a checksum
(`repre.core.checkpoint_io`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from repre.errors import UserError


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


def written_file(path: str) -> str:
    """The file a temporary file stands for (`replacing`'s .NAME.PID.tmp.SUFFIX, a checkpoint's .NAME.tmp and
    its checksum's .NAME.tmp.sha256), so that an error names what the user asked for; other paths as given."""
    name = Path(path).name
    found = re.fullmatch(r"\.(.+)\.\d+\.tmp(\.[^.]+)?", name) or re.fullmatch(r"\.(.+)\.tmp(?:\.sha256)?", name)
    if found is None:
        return path
    return str(Path(path).with_name("".join(part or "" for part in found.groups())))


def check_writable(folder: Path, option: str) -> None:
    """Exit 2 before any work when `folder` (where a command's files go) could not be written: it, or a folder
    above it, is a file, or the nearest existing one is not writable by this user. Nothing is created."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    blocked = next((p for p in (existing, *existing.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise UserError(f"{option} {folder}: {blocked} is a file, not a folder; give another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {folder}: {existing} is not writable by this user; give a path you can write to "
                        "(--out)")
