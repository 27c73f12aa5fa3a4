"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with weights_only=True."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from repre.errors import UserError

SCHEMA = 1
ENCODER_PREFIX = "method.encoder.model."  # where the online timm model's weights sit in "model"
_STEP_FILE = re.compile(r"step-(\d{8})\.pt$")


def versions() -> dict[str, str | None]:
    """Versions of repre, torch and timm, and the git commit of the source tree when known (looked up once)."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    """Uncached lookup behind `versions`."""
    import timm

    import repre

    commit = None
    try:
        here = Path(__file__).resolve().parent
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        text = done.stdout.strip()
        commit = text if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", text) else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"repre": repre.__version__, "torch": str(torch.__version__), "timm": str(timm.__version__), "git": commit}


def save(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a written checkpoint (e.g. to last.pt) with the same temporary-file, fsync, rename sequence."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dst)


def step_checkpoints(folder: Path) -> list[Path]:
    """`checkpoints/step-XXXXXXXX.pt` files of a run, oldest first."""
    files = [p for p in (folder / "checkpoints").glob("step-*.pt") if _STEP_FILE.search(p.name)]
    return sorted(files, key=lambda p: int(_STEP_FILE.search(p.name).group(1)))


def prune(folder: Path, keep: int) -> None:
    for old in step_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)


def load(path: str | Path) -> dict[str, Any]:
    """Open a repre checkpoint safely (no code runs from the file) and check that it is one."""
    path = Path(path)
    if path.is_dir():
        path = next((c for c in (path / "checkpoints" / "last.pt", path / "last.pt") if c.is_file()), path / "checkpoints" / "last.pt")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give a .pt file or a run directory with checkpoints/last.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a file we can trust"
        raise UserError(f"{path} is not a readable repre checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or not {"schema", "model", "config"} <= set(ckpt):
        raise UserError(f"{path} is not a repre checkpoint (no 'schema'/'model'/'config' entries)")
    if ckpt["schema"] != SCHEMA:
        raise UserError(f"{path} has checkpoint schema {ckpt['schema']}; this repre reads schema {SCHEMA}")
    return ckpt


def encoder_state(ckpt: dict[str, Any], key: str = "encoder") -> dict[str, torch.Tensor]:
    """An encoder's weights with timm key names: the online one (`key` "encoder") or, for DINO, the teacher."""
    prefix = ENCODER_PREFIX.replace(".encoder.", f".{key}.")
    return {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
