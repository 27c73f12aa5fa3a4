"""How a failure is told to the person who ran the command: one message on stderr (no traceback) and an exit
status. 2: a user error, said with what to do (a bad input, a path that cannot be written, memory); 3: stopped
and resumable; 1: an internal error (its traceback), or a process of a torchrun run that lost another."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from repre.core.atomic import written_file
from repre.core.launch import launch_rank, launched
from repre.errors import UserError, user_message

# a file or folder that cannot be written where the user pointed (exit 2, not a crash): no permission, a read-only
# filesystem, a file where a folder should be or the reverse, a full disk or quota
PATH_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOSPC,
               errno.EDQUOT)

# what the same command does after Ctrl-C, where it goes on from what it wrote
GOES_ON = {"embed": "; the same command (without --overwrite) goes on from the rows written",
           "eval": "; no partial result is kept, the same command starts again (the linear probe's papers' "
                   "protocols go on from their last saved epoch)"}


@contextmanager
def terminated_as_interrupted() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `timeout`) raises KeyboardInterrupt, as Ctrl-C does: the command's files are
    left whole (no temporary file of a half-written one) and it says how to go on. It is taken between Python
    bytecodes, so a long native call (a UMAP layout) finishes first. Pre-training handles both signals itself (it
    stops at a step and writes a checkpoint)."""
    if threading.current_thread() is not threading.main_thread() or launched():
        # only the main thread may set handlers; under torchrun SIGTERM is the launcher stopping the processes
        # left when another failed (its error is torchrun's summary), and a process waiting in a collective
        # would not run a Python handler before the launcher's SIGKILL
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def tell(exc: BaseException, args: argparse.Namespace) -> int | None:
    """Says `exc` to the person who ran `args.command` and returns the exit status; None where it is not theirs
    to mend (an internal error: its traceback follows)."""
    if isinstance(exc, UserError):
        say(f"repre: error: {user_message(exc)}")
        tell_launcher(exc)
        return 2
    if isinstance(exc, KeyboardInterrupt):
        say(f"repre: interrupted{GOES_ON.get(args.command, '')}")
        return 3
    if isinstance(exc, BrokenPipeError):  # `repre ... | head -1`: the reader left; say nothing more (Python's recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 1
    # torch.OutOfMemoryError (CUDA) is a RuntimeError; host OOM is MemoryError
    if isinstance(exc, RuntimeError) and launched() and lost_a_process(exc):
        # no error file: torchrun's summary shows the earliest (to the second), which this one could hide
        say(lost_process_message(exc))
        return 1
    if isinstance(exc, MemoryError) or isinstance(exc, RuntimeError) and out_of_memory(str(exc)):
        say(out_of_memory_message(exc, args.command))
        return 2
    if isinstance(exc, OSError):
        message = path_error_message(exc, getattr(args, "resolved_out", None) or getattr(args, "out", None))
        if message is not None:
            say(message)
            tell_launcher(UserError(message.removeprefix("repre: error: ")))
            return 2
    return None


def tell_launcher(exc: UserError) -> None:
    """Under torchrun, every process writes its error (the message, no traceback) to the launcher's error file
    (torchelastic's JSON layout): the launcher's failure summary shows it for the process that failed first,
    whichever rank it was."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    message = f"repre: error: {user_message(exc)}"
    info = {"py_callstack": message, "timestamp": str(int(time.time()))}
    record = {"message": {"message": message, "extraInfo": info}}
    try:
        Path(path).write_text(json.dumps(record))
    except OSError:
        pass  # best effort: the exit status still tells the launcher


def say(message: str) -> None:
    """An error for people, on stderr; under torchrun rank 0 says it once for all processes."""
    if launch_rank() == 0:
        print(message, file=sys.stderr)


def path_error_message(exc: OSError, out: str | None) -> str | None:
    """The message of a file or folder that cannot be written where the user pointed (no permission, a file
    where a folder belongs, a full disk), naming it: the target of a rename over it (not the hidden temporary
    file), or the command's --out where the error names none (a write to a full disk). None: another error."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    named = exc.filename2 or exc.filename
    path = written_file(str(named)) if named else (out or "the output") if full else None
    if exc.errno == errno.ENOENT and named and out and made_for(str(named), out):  # a folder that takes no file
        return (f"repre: error: cannot write {path}: no file can be made there (a folder such as /proc takes none); "
                "give another --out")
    if exc.errno not in PATH_ERRORS or path is None:
        return None
    hint = ("free space there, or give another --out" if full else
            "give another path (one this user may read or write, a folder where a folder belongs)")
    return f"repre: error: cannot {'write' if full else 'use'} {path}: {exc.strerror or os.strerror(exc.errno)}; {hint}"


def made_for(named: str, out: str) -> bool:
    """Whether `named` is a file or folder being made for `--out`: `out` itself, or the temporary file that
    stands for it (not a missing input beside it)."""
    return Path(written_file(named)).absolute() == Path(out).absolute()


# what a collective raises in the processes left when another process of the run has stopped: gloo's socket
# errors, NCCL's aborted communicator (not a collective's timeout, which a hang of all raises too)
LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted",
             "remote process exited")


def lost_a_process(exc: RuntimeError) -> bool:
    """Whether `exc` is a collective's error in a process whose peer stopped (its own error said elsewhere)."""
    return any(text in str(exc) for text in LOST_PEER)


def _first_line(exc: BaseException, width: int) -> str:
    """An error's first line, at most `width` characters (a CUDA or gloo message runs on for lines)."""
    if not str(exc).strip():
        return type(exc).__name__
    line = str(exc).strip().splitlines()[0]
    return line if len(line) <= width else line[: width - 3] + "..."


def lost_process_message(exc: RuntimeError) -> str:
    first = _first_line(exc, 160)
    return ("repre: error: another process of this run stopped, and this one lost it in a collective "
            f"({first}): the stopped process's own error is in torchrun's summary (its \"Root Cause\"; on several "
            "nodes, in the log of the node it ran on); "
            "mend the cause and run the same command again (pretrain with --resume: the checkpoints written stand; the "
            "linear probe's papers' protocols go on from their last saved epoch)")


# what lowers the memory a command needs, but pre-training's (its own message)
LESS_MEMORY = {
    "eval": "lower eval.batch_size (the features), eval.finetune.batch_size (finetune) or eval.linear.batch_size "
            "(the papers' linear probes), or --set train.device=cpu",
    "embed": "lower eval.batch_size, or --set train.device=cpu; the same command goes on from the rows written",
    "show": "draw fewer --images, or --set train.device=cpu",
}


HOST_OUT_OF_MEMORY = "can't allocate memory"  # what torch's CPU allocator says


def out_of_memory(message: str) -> bool:
    """Whether an error's message is an allocator's that ran out: CUDA's "out of memory", the CPU's
    "DefaultCPUAllocator: can't allocate memory"."""
    return "out of memory" in message.lower() or HOST_OUT_OF_MEMORY in message


def out_of_memory_message(exc: BaseException, command: str = "pretrain") -> str:
    first = _first_line(exc, 200)
    host = isinstance(exc, MemoryError) or HOST_OUT_OF_MEMORY in str(exc)  # the machine's, not a GPU's
    if command != "pretrain":
        what = LESS_MEMORY.get(command, "free memory, or use a larger machine")
        if host:
            what = what.split(", or --set train.device=cpu")[0] + " (the machine's memory ran out)"
        return f"repre: error: out of memory ({first}): {what}"
    if host:  # more processes on one machine would need more of it
        return (f"repre: error: out of the machine's memory ({first}). Set model.grad_checkpointing=true, fewer "
                "train.num_workers (each data worker holds its own batches) or a lower eval.batch_size for the "
                "run's k-NN (all allowed with --resume); or start a new run from the last checkpoint with a lower "
                "train.batch_size (the lr scales with it): `repre pretrain --config RUN/config.yaml --init-from RUN "
                "--out NEW_DIR --set ...`")
    return (f"repre: error: out of memory ({first}). Set model.grad_checkpointing=true or run more processes "
            "(both allowed with --resume: train.batch_size is the global batch), or lower eval.batch_size for the "
            "run's k-NN; or start a new run from the last checkpoint with a lower train.batch_size (the lr scales "
            "with it) or train.precision=bf16: `repre pretrain --config RUN/config.yaml --init-from RUN --out "
            "NEW_DIR --set ...`")
