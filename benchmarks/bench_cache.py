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
    folder made before folders were named by their settings): delete it to train it again."""
    from repre.config import load_config

    if load_config(out / "config.yaml") != load_config(preset, overrides):
        sys.exit(f"the cached run {out} was trained with other settings than {preset} {' '.join(overrides)}: "
                 "delete it to train it again")
