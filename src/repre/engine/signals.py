"""Pre-emption, Ctrl-C and a closed terminal: stop at the next step boundary, write a checkpoint, exit with status
3."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from repre.core.launch import launch_rank

log = logging.getLogger("repre")


class Interrupted(BaseException):
    """A stop request during `GracefulStop.interrupting()`: the work under way (a final evaluation) is left. A
    BaseException, as KeyboardInterrupt: the `except Exception` of the work it leaves (a dataset's own code
    called there, an image's decoding) must not take it for an error of its own."""


# a terminal's hang-up (an ssh session lost, a terminal window closed); Windows has none
SIGHUP: int | None = getattr(signal, "SIGHUP", None)


def terminals() -> list[int]:
    """Which of the standard output (1) and error (2) write to a terminal (asked while it is there: once hung up,
    it no longer answers as one)."""
    found = []
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                found.append(fd)
    return found


def leave_terminal(fds: list[int]) -> None:
    """Point those of `fds` (which wrote to a terminal) whose terminal has hung up at /dev/null: each write there
    fails (EIO), the summary's last line included, which would end a stopped run with status 1, not 3. Output
    that goes to files (`repre pretrain > log 2>&1 &`), or to a terminal still there (a `kill -HUP`), keeps
    going where it went."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            with contextlib.suppress(OSError):
                if not os.isatty(fd):  # a hung-up terminal no longer answers as one
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class GracefulStop:
    """Context manager: SIGTERM, SIGINT or SIGHUP set `requested`; a second SIGINT raises KeyboardInterrupt at once.
    SIGHUP is taken only where it would have ended the process (not under `nohup`, which ignores it, nor where
    a handler of the caller's is in place), and first points the output that went to the lost terminal at
    /dev/null (`leave_terminal`).
    Within `interrupting()` a request raises `Interrupted` at once instead (what runs there has no step to
    stop after: a run's final evaluations, minutes on ImageNet, longer than a scheduler waits after its signal).

    Handlers are installed only in the main thread (elsewhere signals cannot be caught) and restored on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self.ending = False  # set once the loop is over: no step is left to stop after
        # where the steps stop: the trainer says so where processes agree on a stop at log steps alone
        self.when = "after this step"
        self._interrupting = False
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}  # put back on exit
        self._pid = os.getpid()
        self._terminals: list[int] = []  # the output to point elsewhere when the terminal hangs up

    def _handle(self, signum: int, _frame) -> None:
        if os.getpid() != self._pid:  # a forked data worker inherits the handler; the main process stops the run
            return
        if signum == SIGHUP:
            leave_terminal(self._terminals)
        if self.requested and signum == signal.SIGINT and not self._interrupting:
            raise KeyboardInterrupt
        already, self.requested = self.requested, True
        name = signal.Signals(signum).name
        if self._interrupting:
            log.warning("%s received: the final evaluations are left (--resume redoes them)", name)
            raise Interrupted(name)
        if already or launch_rank() != 0:  # torchrun passes a second Ctrl-C on as SIGTERM; it signals every
            return  # process: the first says it for all
        if self.ending:  # the loop is over: another process evaluates, this one waits for it
            log.warning("%s received: the run's end is left (--resume redoes its final evaluations)", name)
            return
        again = ("torchrun stops the processes 30 s after its signal" if "TORCHELASTIC_RUN_ID" in os.environ
                 else "Ctrl-C again to quit now")
        log.warning("%s received: stopping %s and writing a checkpoint (%s)", name, self.when, again)

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """A block that a stop request interrupts (`Interrupted`), one that came before it included."""
        if self.requested:
            raise Interrupted("a stop requested before")
        self._interrupting = True
        try:
            yield
        finally:
            self._interrupting = False

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
            if SIGHUP is not None and signal.getsignal(SIGHUP) == signal.SIG_DFL:
                self._terminals = terminals()
                self._previous[SIGHUP] = signal.signal(SIGHUP, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
