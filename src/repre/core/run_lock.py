"""One training process a run directory: a lock that its process holds while it trains, which the operating
system releases however the process ends (a crash or SIGKILL leaves no stale lock). A POSIX record lock
(`lockf`): a process's own, which its data workers (forked, and alive a moment after it) do not inherit, and
which another trainer of the same process (a notebook's earlier one, a test's) shares.

Two processes training one directory (a requeued job while the first still runs, or the workers a `torchrun`
killed with SIGKILL leaves behind) would both write checkpoints and metrics.jsonl lines into it. Where the
platform has no `fcntl` (Windows) nothing is locked.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK = ".lock"  # hidden: `check_out` reads a folder with it alone as empty
log = logging.getLogger("repre")


class RunLock:
    """The lock of run directory `folder` (`folder`/.lock, which names its holder: pid, host, since when)."""

    def __init__(self, folder: Path) -> None:
        self.path, self.fd = Path(folder) / LOCK, None

    def acquire(self) -> str | None:
        """Take the lock -> None, or why not (another process holds it)."""
        if fcntl is None:
            return None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):  # a filesystem without locks (some network mounts)
                os.close(fd)
                log.warning("cannot lock %s (%s): nothing keeps a second process from training there", self.path,
                            exc.strerror)
                return None
            holder = self._holder(fd)
            os.close(fd)
            return (f"{self.path.parent} is being trained by another process (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, since {holder.get('since', '?')}): wait for it to end, or stop it "
                    "(the workers of a torchrun killed with SIGKILL go on: ps lists them), or give another --out")
        os.ftruncate(fd, 0)
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode())
        self.fd = fd
        return None

    def release(self) -> None:
        """Give the lock back (the file stays, naming its last holder)."""
        if self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return {}
