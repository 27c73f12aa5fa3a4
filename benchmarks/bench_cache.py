"""Where the benchmarks that train keep their runs, outside the repository: $REPRE_BENCH_CACHE/NAME, or
~/.cache/repre/benchmarks/NAME; a run's folder is named by what it computes, so that a cached run is reused only
for the same settings. Imported by this folder's scripts, not a benchmark."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def cache_dir(name: str) -> Path:
    root = os.environ.get("REPRE_BENCH_CACHE") or Path.home() / ".cache" / "repre" / "benchmarks"
    return Path(root) / name


def folder_name(base: str, settings: list[str]) -> str:
    """`base` alone, or with the hash of the `--set` items that change what it computes (in their order: a
    later item wins over an earlier one)."""
    if not settings:
        return base
    return f"{base}-{hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:10]}"


def say_reused(out: Path, summary: dict) -> None:
    """On stderr: a finished run is reused, and the commit it trained at (delete the folder to train again)."""
    git = (summary.get("versions") or {}).get("git")
    print(f"reusing the finished run {out} (trained at {git or 'an unrecorded commit'}; delete it to train it "
          "again)", file=sys.stderr)


def check_settings(out: Path, preset: str, overrides: list[str]) -> None:
    """Exit where the finished run in `out` was trained with other settings than `preset` + `overrides` (a
    folder made before folders were named by their settings), or on another machine's device or precision
    (`check_machine`): delete it to train it again."""
    from repre.config import load_config

    cfg = load_config(preset, overrides)
    if load_config(out / "config.yaml") != cfg:
        sys.exit(f"the cached run {out} was trained with other settings than {preset} {' '.join(overrides)}: "
                 "delete it to train it again")
    check_machine(out, cfg)


def check_machine(out: Path, cfg) -> None:
    """Exit where the finished run in `out` ran on another kind of device, or in another precision, than `cfg`
    resolves to here (`auto`: bf16 on a CPU with bf16 instructions, fp32 on one without; a cache copied between
    machines). A run on a device this machine lacks is not checked (its cached results stay readable)."""
    import torch

    from repre.core.runtime import pick_device, pick_precision

    device = torch.device(cfg.train.device) if cfg.train.device != "auto" else pick_device("auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        return
    summary = json.loads((out / "summary.json").read_text())
    here = {"device": device.type, "precision": pick_precision(cfg.train.precision, device)}
    there = {"device": str(summary.get("device", "")).split(":")[0], "precision": summary.get("precision")}
    if there != here:
        sys.exit(f"the cached run {out} was trained with {there['precision']} on {there['device']}; this machine "
                 f"runs {here['precision']} on {here['device']}: delete it to train it again, or set "
                 "REPRE_BENCH_CACHE to another folder")
