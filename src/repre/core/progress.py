"""Progress bars. On a terminal a bar redraws up to ten times a second in place; written to a file (a cluster
job's log, `2> log`) each redraw is a line of its own, so there it redraws every `FILE_INTERVAL` seconds: a long
run's log reads as a line of progress (step, loss, lr, images/s) twice a minute, not one per step."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

TERMINAL_INTERVAL = 0.1  # the least seconds between a bar's redraws on a terminal
FILE_INTERVAL = 30.0  # seconds between the lines of a bar written to a file
CURSOR_UP = "\x1b[A"  # tqdm's move to a bar above (nested bars); nothing to move in a file


class LogLines:
    """A file as a bar's output: each redraw a line. tqdm starts a redraw with a carriage return, which a
    terminal turns into drawing over the last one but a file keeps: one ever longer line full of returns.
    A reader that left (`repre pretrain 2>&1 | head`, a `tee` that died: a broken pipe) ends the bar's lines,
    not the run: the log records say the same, and the handler of those swallows its own write errors."""

    def __init__(self, stream: TextIO) -> None:
        self.stream: TextIO | None = stream
        self.count = ""  # the last line's "desc: 40%|####      | 4/10", before its times and values

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace(CURSOR_UP, "").strip("\n").rstrip()
        count = line.partition(" [")[0]
        # a bar's clearing (blanks), cursor moves and the redraw of its last line when it closes (a second "100%"
        # line) write nothing
        if line and count != self.count:
            self._send(lambda stream: stream.write(line + "\n"))
            self.count = count

    def flush(self) -> None:
        self._send(lambda stream: stream.flush())

    def _send(self, act: Callable[[TextIO], object]) -> None:
        if self.stream is None:
            return
        try:
            act(self.stream)
        except OSError:  # the reader left (EPIPE), or the file's disk went away: no more lines
            self.stream = None


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)` on standard error: on a terminal redrawn in place, into a file a line every
    `FILE_INTERVAL` s (`LogLines`)."""
    if sys.stderr.isatty():
        return tqdm(iterable, mininterval=TERMINAL_INTERVAL, dynamic_ncols=True, **kwargs)
    # miniters=1: each update asks whether FILE_INTERVAL has passed since the last line. With tqdm's default
    # (dynamic) miniters its monitor thread redraws a bar whose updates it has spaced out, every maxinterval
    # seconds, with the count it last drew and without restarting the interval: a stale line, then another a few
    # seconds later. A file keeps every line: a bar that a terminal clears at its end (leave=False) would leave
    # its first line (0%) as its last; its end is written.
    kwargs["leave"] = True
    kwargs.setdefault("miniters", 1)
    return tqdm(iterable, mininterval=FILE_INTERVAL, maxinterval=FILE_INTERVAL, file=LogLines(sys.stderr), **kwargs)
