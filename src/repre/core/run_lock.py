"""One training process a run directory (and one writer an embedding file): a lock that its process holds while
it works, which the operating system frees however the process ends (a crash or SIGKILL leaves no stale lock on
a local disk).

Two processes training one directory (a requeued job while the first still runs, or the workers a `torchrun`
killed with SIGKILL leaves behind) would both write checkpoints and metrics.jsonl lines into it. The lock is a
POSIX record lock (`lockf`): a process's own, which its data workers (forked, and alive a moment after it) do
not inherit. A process holds one lock a file: its trainers of one directory (a notebook's, a test's) share it,
counted, since closing any descriptor of the file would drop it. Where the platform has no `fcntl` (Windows)
nothing is locked; a network filesystem mounted without locks guards nothing across machines.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]  # (mypy reads the name as the module alone; `acquire` checks)

LOCK = ".lock"  # hidden: `run_files.folder_kind` does not count it (a folder with it alone is empty)
log = logging.getLogger("repre")
_held: dict[str, list[int]] = {}  # this process's locks: lock file -> [descriptor, holders, remove the file]


def _drop(key: str) -> None:
    """One holder fewer of this process's lock `key`; the last gives it back."""
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _held[key]
        if entry[2]:  # removed while still held: a process that opened it before finds it gone (`_lock`)
            try:
                os.unlink(key)
            except OSError:
                pass
        fcntl.lockf(entry[0], fcntl.LOCK_UN)
        os.close(entry[0])


class RunLock:
    """The lock of run directory `folder` (`folder`/.lock, which names its holder: pid, host, since when), or of
    other files in `folder` (a lock file of their own)."""

    def __init__(self, folder: Path, name: str = LOCK, busy: str = "", remove: bool = False) -> None:
        """`name`: another lock file in `folder` (one of files of its own); `busy`: what another process holding
        it does, as a refusal says it (by default: trains `folder`); `remove`: the file goes when the lock is
        given back (a lock beside a user's own files), where a run directory's stays, naming its last holder."""
        self.path = Path(folder) / name
        self.busy, self.remove = busy, remove
        self._unlock: weakref.finalize | None = None  # given back on `unlock()`, or when this object is collected

    def acquire(self) -> str | None:
        """Take the lock -> None, or why not (another process holds it)."""
        if fcntl is None or self._unlock is not None:
            return None
        key = str(self.path.resolve())
        if key in _held:
            _held[key][1] += 1
        else:
            why = self._lock(key)
            if why:
                return why
        self._unlock = weakref.finalize(self, _drop, key)
        return None

    def unlock(self) -> None:
        """Give the lock back (the file stays, naming its last holder, unless made to be removed)."""
        if self._unlock is not None:
            self._unlock()
            self._unlock = None

    def _lock(self, key: str, tries: int = 3) -> str | None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # the run's own writes will say what is wrong with the folder
            log.warning("cannot lock %s (%s): nothing keeps a second process from working there at once", self.path,
                        exc.strerror)
            return None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._holder(fd) if exc.errno in (errno.EACCES, errno.EAGAIN) else None
            os.close(fd)
            if holder is None:  # a filesystem without locks (some network mounts)
                log.warning("cannot lock %s (%s): nothing keeps a second process from working there at once",
                            self.path, exc.strerror)
                return None
            stop = "" if self.busy else " (the workers of a torchrun killed with SIGKILL go on: ps lists them)"
            return (f"{self.busy or f'{self.path.parent} is being trained'} by another process (pid "
                    f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}): wait "
                    f"for it to end, or stop it{stop}, or give another --out; if that process is gone (its machine "
                    f"crashed, on a network filesystem), delete {self.path}")
        if not self._still_named(fd):  # its holder removed it as it let go: lock the file there now
            os.close(fd)
            if tries > 1:
                return self._lock(key, tries - 1)
            return (f"{self.path} was removed each time this process locked it (another process takes it and gives "
                    "it back): run again")
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode(), 0)
        os.fsync(fd)  # another machine reads the holder from the file
        _held[key] = [fd, 1, self.remove]
        return None

    def _still_named(self, fd: int) -> bool:
        """Whether the file locked through `fd` is still the one at `path`."""
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except OSError:
            return False

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return {}
