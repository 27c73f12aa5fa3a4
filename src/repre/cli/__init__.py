"""The `repre` command. `parser` holds each command's options, `commands` what each runs, `failures` how an
error is told; `main` ties them.

Exit status: 0 success; 1 internal error; 2 user error (the message says what to do); 3 stopped early
but resumable (`"completed": false` in summary.json).
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import sys
from pathlib import Path
from typing import NoReturn

from repre.cli import commands, failures, parser
from repre.core.atomic import check_writable
from repre.core.launch import check_environment, launch_rank, launched
from repre.errors import UserError

log = logging.getLogger("repre")

FILE_OUTPUTS = ("export", "show", "embed", "neighbors", "map")  # the commands whose --out is a file
# the commands that run in one process (torchrun would run each whole in every process, on one file)
ONE_PROCESS = (*FILE_OUTPUTS, "compare", "config", "presets")


def console() -> NoReturn:
    """The `repre` console script and `python -m repre`: `main`, then exit with its status.

    What is alive then (mostly the objects that torch, torchvision and timm made on import: some 400,000, tracked
    by the garbage collector) is frozen out of the collector's reach before the interpreter exits: its last
    collection would walk them all, to free memory that the process's end frees anyway. Reference counting
    frees every object and every `atexit` handler runs; only reference cycles go uncollected, and Python
    does not promise to run their finalizers at exit anyway. Not while data workers are alive: their
    clean-up at exit finds their loaders among the collector's objects (`compat.stop_live_loader_workers`).
    `benchmarks/startup.py` measures the exit with and without the freeze."""
    status = main()
    if not ("multiprocessing" in sys.modules and sys.modules["multiprocessing"].active_children()):
        gc.freeze()
    sys.exit(status)


def main(argv: list[str] | None = None) -> int:
    """What the `repre` command runs, callable in-process (tests, notebooks); returns the exit status."""
    try:
        check_environment()  # the log's prefix reads RANK
    except UserError as exc:
        print(f"repre: error: {exc}", file=sys.stderr)
        return 2
    setup_logging()
    args = parse_once(argv)
    if args.command is None:  # the commands and examples, rather than starting a default run unasked
        parser.build().print_help()
        return 0
    try:
        if args.command in ONE_PROCESS and launched():
            raise UserError(f"repre {args.command} runs in one process: run it without torchrun (pretrain and the "
                            "papers' linear probes share their work among processes)")
        if args.command in FILE_OUTPUTS:  # before the work that the file would hold
            check_writable(Path(args.out).absolute().parent, "--out", args.out)
        if args.command == "pretrain":
            return commands.RUN[args.command](args)
        with failures.terminated_as_interrupted():
            return commands.RUN[args.command](args)
    except BaseException as exc:
        status = failures.tell(exc, args)
        if status is None:
            raise
        return status


def parse_once(argv: list[str] | None):
    """`parser.parse`; under torchrun what it prints before it exits (a usage error, --help, --version) is
    printed by rank 0 alone, and a usage error written to every process's error file (torchrun's summary), as
    the other errors are."""
    if not launched():
        return parser.parse(argv)
    said, shown = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(shown):
            return parser.parse(argv)
    except SystemExit as exc:
        if exc.code:  # argparse's usage and "PROG: error: ..."
            failures.tell_launcher(UserError(said.getvalue().strip().splitlines()[-1].split(": error: ", 1)[-1]))
        if launch_rank() == 0:
            sys.stdout.write(shown.getvalue())
            sys.stderr.write(said.getvalue())
        raise


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (plays well with redirection). On a terminal
    a record first clears the line, so that it does not land after a progress bar's text (the bar draws itself
    again below it); data workers log through it too."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "\r\x1b[K" + text if sys.stderr.isatty() else text


def setup_logging() -> None:
    """repre's log records on stderr as "repre: ..." (another torchrun rank: "repre[rank N]: ...", its warnings
    alone), once however often it is called."""
    if not any(isinstance(h, StderrHandler) for h in log.handlers):
        handler = StderrHandler()
        rank = launch_rank()
        handler.setFormatter(logging.Formatter(f"repre[rank {rank}]: %(message)s" if rank else "repre: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING if rank else logging.INFO)  # other ranks: their own warnings only
        log.propagate = False
