"""Run the test suite as several pytest processes side by side, taking work from a shared queue.

For machines with many cores and a time limit (the GPU check): the README's command spreads the tests over
pytest-xdist workers, which a machine without pytest-xdist lacks and which know no deadline; in one process the
subprocess-heavy tests (2-process torchrun runs, killed-and-resumed runs) take most of the time while most cores
wait. Here the tests of the files named by --split go into the queue first, dealt into as many groups as lanes
(a file's slow tests sit side by side, so dealing spreads them), then every other file whole, largest first, so
the long work starts early and the short fills in. Each pytest process gets cores // lanes threads.

With --deadline S no unit starts after S seconds, and a unit still running then is killed with every process it
started (torchrun's included) and reported as unfinished. After each unit one JSON line goes to stdout: tests
passed, failed (failures and errors), skipped (xfail included), every failure's node id and message, the units
not finished, each unit's seconds, the wall time. The last line is the whole run; it exits 1 unless every unit
ran and no test failed.

    python benchmarks/suite_lanes.py [--lanes 6] [--deadline S] [--tests tests] [--split a.py,b.py] [-- ARGS...]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"]
COUNTS = ("passed", "failed", "skipped")


def units(folder: Path, split: set[str], chunks: int, extra: list[str]) -> list[tuple[str, list[str]]]:
    """The queue as (name, pytest targets): each --split file's tests dealt into `chunks` groups, then the other
    files whole, largest first."""
    files = sorted(folder.glob("test_*.py"), key=lambda f: -f.stat().st_size)
    heavy = [f for f in files if f.name in split]
    work: list[tuple[str, list[str]]] = []
    if heavy:
        listed = subprocess.run([*PYTEST, "-q", "--collect-only", *map(str, heavy), *extra], capture_output=True,
                                text=True)
        for f in heavy:  # node ids are relative to pytest's rootdir, not to here: rebuilt on this path
            ids = [f"{f}::{line.split('::', 1)[1]}" for line in listed.stdout.splitlines()
                   if "::" in line and Path(line.split("::")[0]).name == f.name]
            if not ids:  # a collection error (or nothing selected): the file runs whole, and its pytest says why
                work.append((f.name, [str(f)]))
                continue
            n = min(chunks, len(ids))
            work += [(f"{f.name}[{k + 1}/{n}]", ids[k::n]) for k in range(n)]
    return work + [(f.name, [str(f)]) for f in files if f.name not in split]


def descendants(pid: int) -> list[int]:
    """Every process below pid (Linux /proc), those in sessions of their own included."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_tree(proc: subprocess.Popen) -> None:
    kill([*descendants(proc.pid), proc.pid])
    proc.wait()


def adopt_orphans() -> None:
    """Become the parent of any process our tests' processes leave behind (Linux: a child subreaper), so
    descendants(os.getpid()) finds them even after the pytest process that started them has died."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def outcomes(xml: Path, name: str) -> dict:
    """Counts and failures from a JUnit XML file (xunit1: it names each test's file)."""
    result = {k: 0 for k in COUNTS} | {"failures": []}
    tests: dict[str, list[ET.Element]] = {}  # a test that fails and then errors in teardown has two entries
    for case in ET.parse(xml).getroot().iter("testcase"):
        module, cls = case.get("file") or name, case.get("classname", "").split(".")[-1]
        node = "::".join([module, *([cls] if cls and cls != Path(module).stem else []), case.get("name", "?")])
        tests.setdefault(node, []).extend(case)
    for node, case in tests.items():
        bad = [c for c in case if c.tag in ("failure", "error")]
        if bad:
            result["failed"] += 1
            text = "\n".join(f"{c.tag}: {c.get('message') or ''}\n{c.text or ''}" for c in bad)
            result["failures"].append({"test": node, "message": text[-1500:]})
        elif any(c.tag == "skipped" for c in case):
            result["skipped"] += 1
        else:
            result["passed"] += 1
    return result


def run_unit(name: str, targets: list[str], xml: Path, threads: int, extra: list[str], until: float) -> dict:
    """One pytest process on a file or some of its tests, killed (with all it started) at `until`."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    proc = subprocess.Popen([*PYTEST, "-v", f"--junitxml={xml}", *targets, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        left = until - time.perf_counter()
        out, _ = proc.communicate(timeout=max(left, 0.1) if left < float("inf") else None)
        finished = True
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, _ = proc.communicate()  # what it printed before: nothing is lost by the retry
        finished = False
    result = {"unit": name, "seconds": round(time.perf_counter() - start, 1), "exit": proc.returncode,
              "finished": finished, **{k: 0 for k in COUNTS}, "failures": []}
    if finished and xml.exists():
        result |= outcomes(xml, name)
    if not finished or not xml.exists() or (proc.returncode not in (0, 5) and not result["failures"]):
        # killed at the deadline, crashed (no XML), or pytest failed outside any test: the output's tail names
        # the test it was in (-v)
        why = "unfinished at the deadline" if not finished else f"pytest exit {proc.returncode}"
        result["failures"].append({"test": name, "message": f"{why}\n{out[-1500:]}"})
        result["failed"] += finished  # an unfinished unit is listed apart, its tests counted nowhere
    return result


def report(results: list[dict], work: list, lanes: int, threads: int, start: float, partial: bool) -> dict:
    total = {k: sum(r[k] for r in results) for k in COUNTS}
    unfinished = [r["unit"] for r in results if not r["finished"]]
    ok = not partial and len(results) == len(work) and not unfinished and not total["failed"] and total["passed"]
    return {"benchmark": "suite_lanes", "lanes": lanes, "threads_per_lane": threads, **total, "ok": bool(ok),
            "units": len(work), "units_done": len(results) - len(unfinished), "unfinished": unfinished,
            "units_left": len(work) - len(results),  # not started, or running when stopped
            "partial": partial, "wall_s": round(time.perf_counter() - start, 1),
            "failures": [x for r in results for x in r["failures"]],
            "seconds": {r["unit"]: r["seconds"] for r in sorted(results, key=lambda r: -r["seconds"])}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lanes", type=int, default=6, help="pytest processes at a time (at least 1)")
    p.add_argument("--deadline", type=float, default=float("inf"), help="seconds: no unit starts later, and "
                   "units still running then are killed")
    p.add_argument("--tests", type=Path, default=Path("tests"), help="folder of test_*.py files")
    p.add_argument("--split", default="test_distributed.py,test_reliability.py",
                   help="files whose tests are dealt into one group per lane (the slow, subprocess-heavy ones)")
    p.add_argument("pytest_args", nargs="*", help="after --: passed to every pytest process")
    args = p.parse_args()
    if args.lanes < 1:
        p.error("--lanes must be at least 1")
    start = time.perf_counter()
    until = start + args.deadline
    work = units(args.tests, set(args.split.split(",")), args.lanes, args.pytest_args)
    if not work:
        sys.exit(f"no test_*.py files in {args.tests}")
    todo: queue.Queue[tuple[int, str, list[str]]] = queue.Queue()
    for n, (name, targets) in enumerate(work):
        todo.put((n, name, targets))
    threads = max(1, (os.cpu_count() or 1) // args.lanes)
    results: list[dict] = []
    lock = threading.Lock()

    def stop(signum: int, _frame: object) -> None:  # the stage's time limit: no orphan keeps the cores busy
        kill(descendants(os.getpid()))
        with lock:
            print(json.dumps(report(results, work, args.lanes, threads, start, partial=True)), flush=True)
        os._exit(128 + signum)

    adopt_orphans()
    signal.signal(signal.SIGTERM, stop)
    with tempfile.TemporaryDirectory() as tmp:
        def lane() -> None:
            while time.perf_counter() < until:
                try:
                    n, name, targets = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    res = run_unit(name, targets, Path(tmp) / f"{n}.xml", threads, args.pytest_args, until)
                except Exception as e:  # noqa: BLE001 - a broken unit is reported, the other lanes go on
                    res = {"unit": name, "seconds": 0.0, "exit": None, "finished": True, "passed": 0,
                           "failed": 1, "skipped": 0, "failures": [{"test": name, "message": repr(e)}]}
                with lock:
                    results.append(res)
                    print(f"{res['unit'][:70]:<70} {res['seconds']:6.1f} s  passed {res['passed']}  failed "
                          f"{res['failed']}  skipped {res['skipped']}" + ("" if res["finished"] else "  UNFINISHED"),
                          file=sys.stderr, flush=True)
                    print(json.dumps(report(results, work, args.lanes, threads, start, partial=True)), flush=True)

        workers = [threading.Thread(target=lane) for _ in range(args.lanes)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    kill(descendants(os.getpid()))  # whatever a test left running
    final = report(results, work, args.lanes, threads, start, partial=False)
    print(json.dumps(final), flush=True)
    sys.exit(0 if final["ok"] else 1)


if __name__ == "__main__":
    main()
