"""Pre-emption and Ctrl-C: stop at the next step boundary, write a checkpoint, exit with status 3."""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("repre")


class GracefulStop:
    """Context manager: SIGTERM or SIGINT set `requested`; a second SIGINT raises KeyboardInterrupt at once.

    Handlers are installed only in the main thread (elsewhere signals cannot be caught) and restored on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def _handle(self, signum: int, _frame) -> None:
        if os.getpid() != self._pid:  # a forked data worker inherits the handler; the main process stops the run
            return
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: stopping after this step and writing a checkpoint (Ctrl-C again to quit now)",
                    signal.Signals(signum).name)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
