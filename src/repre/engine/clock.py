"""Where a run's wall time goes: the steps (data waits included), the compiling first step of each start, and
pauses that count as neither (the periodic evaluations, checkpoints); and the images/s of each train line's
window of steps."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from repre.engine.state import RunState


class StepClock:
    """Adds each step's wall time to the run's `train_seconds`, or to `compile_seconds` for the first step of a
    start that compiles (its data wait counts as any step's); `paused()` leaves its block out of both and out of
    the window."""

    def __init__(self, state: RunState, compiling: bool) -> None:
        self.state, self.compiling = state, compiling
        self.tick = self.window_start = time.perf_counter()
        self.window_steps = 0

    def fetched(self) -> None:
        """The step's batch is here: a compiling step's wait for it is training time, the step itself not."""
        if self.compiling:
            now = time.perf_counter()
            self.state.train_seconds += now - self.tick
            self.tick = now

    def stepped(self) -> None:
        """The step is done."""
        now = time.perf_counter()
        if self.compiling:
            self.state.compile_seconds += now - self.tick
            self.window_start += now - self.tick  # the window's images/s leaves it out too
            self.compiling = False
        else:
            self.state.train_seconds += now - self.tick  # wall time, data waits included
        self.tick = now
        self.window_steps += 1

    def window_rate(self, batch_size: int) -> float:
        """Images/s of the window's steps: since `new_window` (or the start)."""
        return self.window_steps * batch_size / max(time.perf_counter() - self.window_start, 1e-9)

    def new_window(self) -> None:
        """The next window starts: after a train line is written, whose writing is no window's time."""
        self.window_start, self.window_steps = time.perf_counter(), 0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time that is no step's, nor the window's."""
        start = time.perf_counter()
        try:
            yield
        finally:
            pause = time.perf_counter() - start
            self.tick += pause
            self.window_start += pause
