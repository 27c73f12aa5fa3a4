"""Run the test suite as several pytest processes side by side, taking work from a shared queue.

For machines with many cores and a time limit (the GPU check). In CI the suite runs in one process; there its
subprocess-heavy tests (2-process torchrun runs, killed-and-resumed runs) take most of the time while most cores
wait. Here the files named by --split go into the queue test by test, first, and every other file whole, largest
first, so the long work starts early and the short fills in. Each pytest process gets cores // lanes threads.
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


def units(folder: Path, split: set[str]) -> list[str]:
    """The queue: every test of the --split files (node ids), then the other files, largest first."""
    files = sorted(folder.glob("test_*.py"), key=lambda f: -f.stat().st_size)
    heavy = [str(f) for f in files if f.name in split]
    ids = []
    if heavy:
        listed = subprocess.run([*PYTEST, "--collect-only", *heavy], capture_output=True, text=True)
        by_name = {Path(f).name: f for f in heavy}  # node ids are relative to pytest's rootdir, not to here
        ids = [f"{by_name[Path(line.split('::')[0]).name]}::{line.split('::', 1)[1]}"
               for line in listed.stdout.splitlines() if "::" in line and Path(line.split("::")[0]).name in by_name]
        if not ids:  # a collection error: the files run whole, and their pytest reports it
            ids = heavy
    return ids + [str(f) for f in files if f.name not in split]


def run_unit(unit: str, xml: Path, threads: int, extra: list[str]) -> dict:
    """One pytest process on one file or test; its JUnit XML read back as counts and failures."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    done = subprocess.run([*PYTEST, f"--junitxml={xml}", unit, *extra], capture_output=True, text=True, env=env)
    name = Path(unit.split("::")[0]).name + ("::" + unit.split("::", 1)[1] if "::" in unit else "")
    result = {"unit": name, "seconds": round(time.perf_counter() - start, 1), "exit": done.returncode,
              "passed": 0, "failed": 0, "skipped": 0, "errors": 0, "failures": []}
    if not xml.exists():  # pytest itself failed (a collection error, a crash): keep its last words
        result["errors"] = 1
        result["failures"].append({"test": name, "message": (done.stdout + done.stderr)[-1500:]})
        return result
    cases = list(ET.parse(xml).getroot().iter("testcase"))
    if not cases and done.returncode not in (0, 5):  # a usage error or crash before any test ran
        result["errors"] = 1
        result["failures"].append({"test": name, "message": (done.stdout + done.stderr)[-1500:]})
    for case in cases:
        node = f"{Path(unit.split('::')[0]).name}::{case.get('name')}"
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
    work = units(args.tests, set(args.split.split(",")))
    if not work:
        sys.exit(f"no test_*.py files in {args.tests}")
    todo: queue.Queue[tuple[str, int]] = queue.Queue()
    for n, u in enumerate(work):
        todo.put((u, n))
    threads = max(1, (os.cpu_count() or 1) // args.lanes)
    results: list[dict] = []
    start = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        def lane() -> None:
            while True:
                try:
                    unit, n = todo.get_nowait()
                except queue.Empty:
                    return
                res = run_unit(unit, Path(tmp) / f"{n}.xml", threads, args.pytest_args)
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
