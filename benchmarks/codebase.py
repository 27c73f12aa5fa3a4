"""The shape of the codebase, for one or several checkouts side by side: README size, tracked files, the
longest function in src/, the Trainer's attributes, the import contract, `repre --help` time and whether it
loads torch, and (with --suite) the test suite's wall time.

    python benchmarks/codebase.py                                   # this checkout
    python benchmarks/codebase.py --tree old=../old --tree new=. --suite   # two commits; suites one after the other

Each checkout is measured with its own src/ first on the import path, in processes of its own, one after the
other (two test suites side by side on a small machine would only measure their contention). Prints a table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HELP_RUNS = 5  # `repre --help` timings per checkout (the median is reported)


def git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=True).stdout


def tracked(tree: Path) -> dict:
    """Tracked files and their bytes at HEAD (git's sizes), and those under benchmarks/results."""
    rows = [line.split(None, 4) for line in git(tree, "ls-tree", "-r", "-l", "HEAD").splitlines()]
    sizes = {row[4]: int(row[3]) for row in rows if row[3] != "-"}
    results = {p: s for p, s in sizes.items() if p.startswith("benchmarks/results/")}
    return {"files": len(sizes), "bytes": sum(sizes.values()), "results_files": len(results),
            "results_bytes": sum(results.values())}


def longest_function(tree: Path) -> dict:
    """The longest function or method in src/ (lines from `def` to its last line)."""
    best = (0, "")
    for path in sorted((tree / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > best[0]:
                    best = (length, f"{path.relative_to(tree)}:{node.lineno} {node.name}")
    return {"lines": best[0], "where": best[1]}


def trainer_shape(tree: Path) -> dict:
    """Attributes the Trainer class assigns (self.X = ...) and its methods."""
    path = tree / "src" / "repre" / "engine" / "trainer.py"
    cls = next(n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    attrs = {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
             and isinstance(n.value, ast.Name) and n.value.id == "self"}
    methods = [n.name for n in cls.body if isinstance(n, ast.FunctionDef)]
    return {"attributes": len(attrs), "methods": len(methods)}


def env_for(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree / "src")}


def import_contract(tree: Path) -> str | None:
    """import-linter's verdict ("N kept, M broken"), or None where the checkout has no contract."""
    if "importlinter" not in (tree / "pyproject.toml").read_text():
        return None
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--no-cache"], cwd=tree, env=env_for(tree),
                          capture_output=True, text=True)
    return next((ln.replace("Contracts: ", "").rstrip(".") for ln in done.stdout.splitlines()
                 if ln.startswith("Contracts:")), f"failed: {done.stdout[-300:]}{done.stderr[-300:]}")


def help_time(tree: Path) -> dict:
    """Wall time of `python -m repre --help` (median of HELP_RUNS) and whether that process imports torch."""
    times = []
    for _ in range(HELP_RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "repre", "--help"], env=env_for(tree), capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    probe = ("import sys, runpy\nsys.argv = ['repre', '--help']\n"
             "try:\n    runpy.run_module('repre', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], env=env_for(tree), capture_output=True, text=True)
    return {"median_s": round(statistics.median(times), 3), "loads_torch": done.stderr.strip().endswith("True")}


def suite_time(tree: Path) -> dict:
    """The README's pytest run in that checkout (its own tests, its own src/): wall time and pytest's last line."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tree,
                          env=env_for(tree), capture_output=True, text=True)
    return {"wall_s": round(time.perf_counter() - start, 1), "result": done.stdout.strip().splitlines()[-1]}


def measure(tree: Path, suite: bool) -> dict:
    row = {"commit": git(tree, "rev-parse", "--short", "HEAD").strip(),
           "readme_chars": len((tree / "README.md").read_text()), **tracked(tree),
           "longest_function": longest_function(tree), "trainer": trainer_shape(tree),
           "import_contract": import_contract(tree), "help": help_time(tree)}
    if suite:
        row["suite"] = suite_time(tree)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR", help="a checkout to measure")
    p.add_argument("--suite", action="store_true", help="also time each checkout's test suite (minutes)")
    args = p.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree) or {"here": str(Path(__file__).resolve().parent.parent)}
    rows = {label: measure(Path(path).resolve(), args.suite) for label, path in trees.items()}
    for label, row in rows.items():
        suite = f", suite {row['suite']['wall_s']} s ({row['suite']['result']})" if "suite" in row else ""
        print(f"{label} ({row['commit']}): README {row['readme_chars']} chars; {row['files']} tracked files, "
              f"{row['bytes']} bytes ({row['results_files']} / {row['results_bytes']} under benchmarks/results); "
              f"longest function {row['longest_function']['lines']} lines ({row['longest_function']['where']}); "
              f"Trainer {row['trainer']['attributes']} attributes, {row['trainer']['methods']} methods; "
              f"import contract {row['import_contract']}; `repre --help` {row['help']['median_s']} s, "
              f"loads torch: {row['help']['loads_torch']}{suite}")
    print(json.dumps({"benchmark": "codebase", "date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0],
                      "trees": rows}))


if __name__ == "__main__":
    main()
