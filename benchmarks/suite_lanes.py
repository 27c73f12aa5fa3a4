"""Run the test suite as several pytest processes side by side, taking work from a shared queue.

For machines with many cores and a time limit (the GPU check). In CI the suite runs in one process; there its
subprocess-heavy tests (2-process torchrun runs, killed-and-resumed runs) take most of the time while most cores
wait. Here the tests of the files named by --split go into the queue first, dealt into as many groups as lanes,
then every other file whole, largest first, so the long work starts early and the short fills in. Each pytest process gets cores // lanes threads.
Prints one JSON line: tests passed, failed, skipped and errored, every failure's node id and message, the seconds
of each unit, and the wall time; exits 1 when a test failed.

    python benchmarks/suite_lanes.py [--lanes 6] [--tests tests] [--split test_a.py,test_b.py] [-- PYTEST_ARGS...]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def units(folder: Path, split: set[str], chunks: int) -> list[tuple[str, list[str]]]:
    """The queue as (name, pytest arguments): the tests of each --split file dealt into `chunks` groups (the slow
    tests of a file sit side by side in it, so dealing spreads them), then the other files whole, largest first."""
    files = sorted(folder.glob("test_*.py"), key=lambda f: -f.stat().st_size)
    heavy = [f for f in files if f.name in split]
    queue_: list[tuple[str, list[str]]] = []
    if heavy:
        listed = subprocess.run([*PYTEST, "--collect-only", *map(str, heavy)], capture_output=True, text=True)
        for f in heavy:  # node ids are relative to pytest's rootdir, not to here: rebuilt on this path
            ids = [f"{f}::{line.split('::', 1)[1]}" for line in listed.stdout.splitlines()
                   if "::" in line and Path(line.split("::")[0]).name == f.name]
            if not ids:  # a collection error: the file runs whole, and its pytest reports it
                queue_.append((f.name, [str(f)]))
                continue
            n = min(chunks, len(ids))
            queue_ += [(f"{f.name}[{k + 1}/{n}]", ids[k::n]) for k in range(n)]
    return queue_ + [(f.name, [str(f)]) for f in files if f.name not in split]


def run_unit(name: str, targets: list[str], xml: Path, threads: int, extra: list[str]) -> dict:
    """One pytest process on a file or some of its tests; its JUnit XML read back as counts and failures."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    done = subprocess.run([*PYTEST, f"--junitxml={xml}", *targets, *extra], capture_output=True, text=True,
                          env=env)
    result = {"unit": name, "seconds": round(time.perf_counter() - start, 1), "exit": done.returncode,
              "passed": 0, "failed": 0, "skipped": 0, "errors": 0, "failures": []}
    cases = list(ET.parse(xml).getroot().iter("testcase")) if xml.exists() else []
    if not cases and done.returncode not in (0, 5):  # pytest failed before any test ran (a usage error, a crash)
        result["errors"] = 1
        result["failures"].append({"test": name, "message": (done.stdout + done.stderr)[-1500:]})
    for case in cases:
        module = case.get("classname", "").split(".")[-1]
        node = f"{module}.py::{case.get('name')}" if module else f"{name}::{case.get('name')}"
        outcome = next(iter(case), None)
        if outcome is None or outcome.tag in ("system-out", "system-err"):
            result["passed"] += 1
        elif outcome.tag == "skipped":
            result["skipped"] += 1
        else:  # failure or error
            result["failed" if outcome.tag == "failure" else "errors"] += 1
            text = (outcome.get("message") or "") + "\n" + (outcome.text or "")
            result["failures"].append({"test": node, "message": text[-1500:]})
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lanes", type=int, default=6, help="pytest processes at a time")
    p.add_argument("--tests", type=Path, default=Path("tests"), help="folder of test_*.py files")
    p.add_argument("--split", default="test_distributed.py,test_reliability.py",
                   help="files whose tests are queued one by one (the slow, subprocess-heavy ones)")
    p.add_argument("pytest_args", nargs="*", help="after --: passed to every pytest process")
    args = p.parse_args()
    work = units(args.tests, set(args.split.split(",")), args.lanes)
    if not work:
        sys.exit(f"no test_*.py files in {args.tests}")
    todo: queue.Queue[tuple[int, str, list[str]]] = queue.Queue()
    for n, (name, targets) in enumerate(work):
        todo.put((n, name, targets))
    threads = max(1, (os.cpu_count() or 1) // args.lanes)
    results: list[dict] = []
    start = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        def lane() -> None:
            while True:
                try:
                    n, name, targets = todo.get_nowait()
                except queue.Empty:
                    return
                res = run_unit(name, targets, Path(tmp) / f"{n}.xml", threads, args.pytest_args)
                results.append(res)
                print(f"{res['unit'][:70]:<70} {res['seconds']:6.1f} s  passed {res['passed']}  failed "
                      f"{res['failed'] + res['errors']}  skipped {res['skipped']}", file=sys.stderr, flush=True)

        workers = [threading.Thread(target=lane) for _ in range(args.lanes)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    total = {k: sum(r[k] for r in results) for k in ("passed", "failed", "skipped", "errors")}
    print(json.dumps({"benchmark": "suite_lanes", "lanes": args.lanes, "threads_per_lane": threads, **total,
                      "ok": total["failed"] + total["errors"] == 0, "wall_s": round(time.perf_counter() - start, 1),
                      "failures": [x for r in results for x in r["failures"]],
                      "seconds": {r["unit"]: r["seconds"] for r in sorted(results, key=lambda r: -r["seconds"])}}))
    sys.exit(0 if total["failed"] + total["errors"] == 0 else 1)


if __name__ == "__main__":
    main()
