"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with weights_only=True.

Each file has a sidecar `NAME.sha256` ("<sha256> <size>") written after it: a checkpoint whose bytes do not
match (truncated, corrupted in transit or on disk) is detected before it is unpickled.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from repre.core import dist, run_files
from repre.errors import UserError

SCHEMA = 1


def versions() -> dict[str, str | bool | None]:
    """Versions of repre, torch and timm, and the git commit of the source tree when known, with whether its
    tracked files differ from it (`git_modified`) (looked up once)."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | bool | None]:
    """Uncached lookup behind `versions`."""
    import timm

    from repre._version import __version__

    commit, modified = git_state(Path(__file__).resolve().parent)
    return {"repre": __version__, "torch": str(torch.__version__), "timm": str(timm.__version__), "git": commit,
            **({"git_modified": modified} if commit is not None else {})}


def git_state(folder: Path) -> tuple[str | None, bool | None]:
    """The commit of the git work tree holding `folder`, and whether its tracked files differ from it (a commit
    alone would claim the code of a tree with changes not committed); (None, None) outside one."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None, None
    commit = done.stdout.strip()
    if done.returncode or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return None, None
    try:
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=folder, capture_output=True, timeout=5)
    except (OSError, subprocess.SubprocessError):  # the commit stands; whether the tree differs is unknown
        return commit, None
    return commit, {0: False, 1: True}.get(diff.returncode)


def _sidecar(path: Path) -> Path:
    return run_files.checksum_file(path)


def _digest_of(fh: IO[bytes]) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 22), b""):
        h.update(block)
    return h.hexdigest()


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return _digest_of(fh)


def digest(path: str | Path) -> str:
    """The SHA-256 of a checkpoint file (or a run directory's last.pt): from its sidecar when it has one (the
    digest recorded when it was written), else hashed now. What identifies the weights something was made from."""
    path = checkpoint_file(path)
    side = _sidecar(path)
    recorded = side.read_text().split() if side.is_file() else []
    return recorded[0] if recorded else _digest(path)


def _write_atomic(path: Path, write: Callable[[IO[bytes]], object], digest: str | None = None) -> None:
    """write(fh) into a temporary file beside `path`, fsync, rename over `path`, then its checksum sidecar
    (`digest`, "<sha256> <size>", when the bytes are known to be another file's; else hashed here).
    On any failure (a full disk: ENOSPC, EFBIG) the temporary file is removed and `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _publish(tmp, path, digest)


def _publish(tmp: Path, path: Path, digest: str | None) -> None:
    """Rename the finished temporary file `tmp` over `path`, then put its checksum sidecar beside it; on any
    failure both temporaries are removed and `path` is left as it was."""
    side_tmp = tmp.with_name(tmp.name + ".sha256")
    try:
        side_tmp.write_text(digest or f"{_digest(tmp)} {tmp.stat().st_size}\n")
        _sidecar(path).unlink(missing_ok=True)  # never a new file beside an old checksum
        os.replace(tmp, path)
        os.replace(side_tmp, _sidecar(path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        side_tmp.unlink(missing_ok=True)
        raise


def save(state: dict[str, Any], path: Path) -> None:
    """Write `state` atomically (temporary file, fsync, rename) with its checksum sidecar. A failed write
    raises OSError (torch.save's zip writer turns a full disk into a RuntimeError; it is converted back), and
    Ctrl-C during it KeyboardInterrupt (the writer turned it into a RuntimeError too: "is the disk full?")."""
    try:
        _write_atomic(path, lambda fh: torch.save(state, fh))
    except RuntimeError as exc:
        if isinstance(exc.__context__, BaseException) and not isinstance(exc.__context__, Exception):
            raise exc.__context__ from None  # KeyboardInterrupt, or a signal's Interrupted, during the write
        cause = next((e for e in (exc.__context__, exc.__cause__) if isinstance(e, OSError)), None)
        raise OSError(getattr(cause, "errno", None) or errno.EIO,
                      f"{cause.strerror if cause else exc}", str(path)) from exc


def load_everywhere(path: Path, what: str, folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """`load(path)` on every process (a collective under torchrun): (the checkpoint, None) where every process
    read it; (None, why) where every one failed alike (damage: the same bytes everywhere). Where some read it and
    others not, every process raises the same UserError: they see other files at `folder` (a node whose view
    lags), and one going on from another state would wait in a collective for good."""
    try:
        ckpt, why = load(path), None
    except UserError as exc:
        ckpt, why = None, str(exc)
    whys = dist.gather_objects(why)
    if any(w is None for w in whys) and any(w is not None for w in whys):
        rank, reason = next((r, w) for r, w in enumerate(whys) if w is not None)
        raise UserError(f"process {rank} cannot read {what} that the others read ({reason}): {folder} must be "
                        "one folder that every process sees whole (a shared filesystem, its writes visible on "
                        "every node)")
    return ckpt, why


def sweep_temporaries(folder: Path) -> None:
    """Remove the temporary files of writes that a crash (SIGKILL, power loss) interrupted."""
    for tmp in (folder / run_files.CHECKPOINTS).glob(".*.tmp*"):
        tmp.unlink(missing_ok=True)


def link_atomic(src: Path, dst: Path) -> None:
    """Make `dst` (last.pt) the written checkpoint `src`: a hard link, so the bytes are on disk once and stay
    when `src` is pruned, put in place by the same rename as every write; a copy (written and synced as `save`
    writes) where the filesystem has no hard links."""
    side = _sidecar(src)
    digest = side.read_text() if side.is_file() else None  # the same bytes: the same checksum
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links (FAT, some network and FUSE filesystems), or `src` on another device
        def write(fh) -> None:
            with open(src, "rb") as source:
                shutil.copyfileobj(source, fh)

        _write_atomic(dst, write, digest)
        return
    _publish(tmp, dst, digest)
    tmp.unlink(missing_ok=True)  # a rename between two links of one file leaves both names


def verify(path: Path, fh: IO[bytes] | None = None) -> None:
    """Raise UserError when `path` does not match its sidecar checksum (files without one are not checked).
    `fh`: the file already opened for loading (hashed through it, so the bytes checked are the bytes loaded)."""
    side = _sidecar(path)
    if not side.is_file():
        return
    try:
        digest, size = side.read_text().split()
    except ValueError:
        raise UserError(f"{side} is not a checksum file; delete it to load {path} unchecked") from None
    actual = os.fstat(fh.fileno()).st_size if fh is not None else path.stat().st_size
    if actual != int(size):
        raise UserError(f"{path} is truncated or damaged: {actual} bytes, {size} when written{_others(path)}; copy "
                        "it again, or give another checkpoint")
    if (_digest_of(fh) if fh is not None else _digest(path)) != digest:
        raise UserError(f"{path} is damaged: its SHA-256 differs from the one recorded when it was written"
                        f"{_others(path)}; copy it again, or give another checkpoint")


def _others(path: Path) -> str:
    """For a message about a bad checkpoint in a run: the run's other checkpoints, newest first ("" if none);
    not the damaged file under its other name (last.pt is a hard link to the newest step file)."""
    in_run = run_files.in_checkpoints(path)
    run = path.absolute().parent.parent
    others = [p for p in step_checkpoints(run) if not _same_file(p, path)][::-1] if in_run else []
    names = ", ".join(p.name for p in others[:3])
    return f"; its run has {names} in {path.parent}" if others else ""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b


def step_checkpoints(folder: Path) -> list[Path]:
    """`checkpoints/step-XXXXXXXX.pt` files of a run, oldest first."""
    steps = {p: step for p in (folder / run_files.CHECKPOINTS).glob("step-*.pt")
             if (step := run_files.step_of(p.name)) is not None}
    return sorted(steps, key=lambda p: steps[p])


def prune(folder: Path, keep: int, milestone_every: int = 0) -> None:
    """Delete all but the newest `keep` step checkpoints, sparing milestones (steps divisible by milestone_every)."""
    for old in step_checkpoints(folder)[:-keep]:
        step = run_files.step_of(old.name)
        assert step is not None  # a step file (`step_checkpoints`)
        if milestone_every and step % milestone_every == 0:
            continue
        old.unlink(missing_ok=True)
        _sidecar(old).unlink(missing_ok=True)


def checkpoint_file(path: str | Path) -> Path:
    """The file a checkpoint argument names: the file itself, or a run directory's checkpoints/last.pt (~: the
    user's home, as a shell would read it)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return path
    candidates = (path / run_files.CHECKPOINTS / run_files.LAST, path / run_files.LAST)
    return next((c for c in candidates if c.is_file()), candidates[0])


def named_file(path: str | Path) -> Path:
    """The file a record (a result, a model card) names for a checkpoint argument: a run's step-N.pt where the
    argument is one (the run, its last.pt or a link), since last.pt names another step once the run goes on;
    else the file given."""
    file = checkpoint_file(path)
    step = run_files.checkpoint_step(file)
    if step is None:
        return file
    return (file.resolve() if file.is_symlink() else file).parent / f"{run_files.step_name(step)}.pt"


def pinned(path: str | Path) -> Path:
    """The file to read a checkpoint argument from, once: a run's step file where the argument names one (the
    run, its last.pt, which a run still training replaces between a read of its weights and of its checksum),
    else the argument (a missing file: `load` says what is missing)."""
    return named_file(path) if checkpoint_file(path).is_file() else Path(path)


def load(path: str | Path, weights: bool = True) -> dict[str, Any]:
    """Open a repre checkpoint safely (no code runs from the file) and check that it is one. `weights` False:
    for its config and records alone, its tensors memory-mapped (not read) and its checksum not verified (a
    damaged file's weights are not used)."""
    given, path = Path(path).expanduser(), checkpoint_file(path)
    if not path.is_file() and (given / run_files.CONFIG).is_file():  # a run directory whose run is at its start
        raise UserError(f"{given} is a run without a checkpoint yet (a run writes one every "
                        "train.checkpoint_every steps and when it stops, Ctrl-C included): give a run or a .pt file "
                        "that has one")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give a .pt file or a run directory with "
                        "checkpoints/last.pt")
    with open(path, "rb") as fh:
        if weights:
            verify(path, fh)
            fh.seek(0)
        head = fh.read(9)
        if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save's zip archive, or a pickle
            if run_files.in_checkpoints(path):
                raise UserError(f"{path} is empty or damaged (not a file torch.save writes){_others(path)}")
            if head[8:9] == b"{":  # safetensors: a header's length, then its JSON
                raise UserError(f"{path} is a safetensors file (a `repre export` holds the encoder alone): give "
                                "the run directory it was exported from, or one of its checkpoints/*.pt (an "
                                "export's card names the file, `checkpoint`)")
            raise UserError(f"{path} is not a checkpoint (not a file torch.save writes): give a run directory or "
                            "one of its checkpoints/*.pt")
        fh.seek(0)
        try:
            with warnings.catch_warnings():  # a pickle of another protocol than torch.save's: said below if so
                warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
                lazy = not weights and head[:4] == b"PK\x03\x04"  # mmap reads torch.save's zip archives
                ckpt = torch.load(str(path) if lazy else fh, map_location="cpu", weights_only=True, mmap=lazy)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a file we can trust"
            raise UserError(f"{path} is not a readable repre checkpoint: {_unreadable(exc)}") from None
    if not isinstance(ckpt, dict) or not {"schema", "model", "config"} <= set(ckpt):
        raise UserError(f"{path} is not a repre checkpoint (no 'schema'/'model'/'config' entries)")
    if ckpt["schema"] != SCHEMA:
        wrote = (ckpt.get("versions") or {}).get("repre") or "unknown"
        raise UserError(f"{path} has checkpoint schema {ckpt['schema']} (written by repre {wrote}); this repre "
                        f"({versions()['repre']}) reads schema {SCHEMA}: read it with the repre that wrote it")
    ckpt["model"] = {_renamed(k): v for k, v in ckpt["model"].items()}
    return ckpt


def _unreadable(exc: Exception) -> str:
    """Why torch.load could not read a checkpoint, for people."""
    if "unsupported global" in str(exc).lower():  # a class or function the file would call
        return ("it holds Python objects that could run code when opened (only tensors and plain values are "
                "allowed); it was not written by repre or has been tampered with")
    if "weights only load failed" in str(exc).lower():  # torch's advice (weights_only=False) would run its code
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
        return ("it is no file of tensors and plain values that torch.save wrote, which alone open safely"
                f"{f' ({detail[1].strip()})' if detail else ''}; give a run directory or one of its checkpoints/*.pt")
    if isinstance(exc, EOFError) or "PytorchStreamReader" in str(exc):  # the zip archive's end is missing
        return ("it is cut short or damaged (not a whole file torch.save wrote: a copy that did not finish?); "
                "copy it again, or give another checkpoint")
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _renamed(key: str) -> str:
    """A model key of repre 0.1 in today's layout: the decoder moved into the branch (`repre.branch`)."""
    return "branch." + key if key.startswith("decoder.") else key


def size_mismatch(exc: RuntimeError) -> str:
    """The first "size mismatch" line of a load_state_dict error (or its start): what to show a user."""
    return next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:200])
