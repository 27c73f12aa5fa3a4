"""Files written whole or not at all: a temporary file beside the target, renamed over it once complete (a
process stopped while writing leaves the old file, or none). Checkpoints add an fsync and a checksum
(`repre.core.checkpoint_io`)."""

from __future__ import annotations

import glob
import os
import re
import time
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
    _sweep_abandoned(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# a temporary file untouched this long is no write in progress (a write is seconds), on another host either,
# where its process number says nothing
ABANDONED_S = 600


def _sweep_abandoned(path: Path) -> None:
    """Remove the temporaries of earlier writes of `path` whose process was killed (SIGKILL, an out-of-memory
    kill: nothing of it could remove them; an export's is the size of its weights): their process is gone
    and they are not written to any more."""
    for tmp in path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}"):
        found = re.fullmatch(rf"\.{re.escape(path.stem)}\.(\d+)\.tmp{re.escape(path.suffix)}", tmp.name)
        if found is None or int(found.group(1)) == os.getpid() or _alive(int(found.group(1))):
            continue
        try:
            if time.time() - tmp.stat().st_mtime > ABANDONED_S:
                tmp.unlink()
        except OSError:  # gone meanwhile, or not ours to remove: it stays, as before
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def written_file(path: str) -> str:
    """The file a temporary file stands for (`replacing`'s .NAME.PID.tmp.SUFFIX, a checkpoint's .NAME.tmp and
    its checksum's .NAME.tmp.sha256), so that an error names what the user asked for; other paths as given."""
    name = Path(path).name
    found = re.fullmatch(r"\.(.+)\.\d+\.tmp(\.[^.]+)?", name) or re.fullmatch(r"\.(.+)\.tmp(?:\.sha256)?", name)
    if found is None:
        return path
    return str(Path(path).with_name("".join(part or "" for part in found.groups())))


def check_writable(folder: Path, option: str, given: str | Path | None = None) -> None:
    """Exit 2 before any work when `folder` (where a command's files go) could not be written: it, or a folder
    above it, is a file, or the nearest existing one is on a read-only filesystem or not writable by this user.
    Nothing is created. `given`: the path the user gave, when `folder` is the one it goes into (a file's)."""
    said = f"{option} {given if given is not None else folder}"
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    blocked = next((p for p in (existing, *existing.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise UserError(f"{said}: {blocked} is a file, not a folder; give another path")
    statvfs = getattr(os, "statvfs", None)  # not on Windows
    if statvfs is not None and statvfs(existing).f_flag & os.ST_RDONLY:
        raise UserError(f"{said}: {existing} is on a read-only filesystem; give a path on another one (--out)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{said}: {existing} is not writable by this user; give a path you can write to (--out)")
