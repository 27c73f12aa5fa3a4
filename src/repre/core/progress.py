"""Progress bars. On a terminal a bar redraws up to ten times a second; written to a file (a cluster job's
log, `2> log`) it adds a line each time it redraws, so there it redraws every `FILE_INTERVAL` seconds: a long
run's log reads as a line of progress (step, loss, lr, images/s) twice a minute, not one per step."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

FILE_INTERVAL = 30.0  # seconds between the lines of a bar written to a file


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)` on standard error, redrawn at most every `FILE_INTERVAL` s unless that is a
    terminal."""
    interval = 0.1 if sys.stderr.isatty() else FILE_INTERVAL
    return tqdm(iterable, mininterval=interval, dynamic_ncols=True, **kwargs)
