"""Paired differences between two quality runs: one search point in file A minus one in file B, seed by seed.

A search with `--set KEY=VALUE` and the search it is measured against are two runs of `quality.py`, each with
its own result file; this pairs their values by seed (the seeds both hold), with docs/results.md's statistics:
mean ± sample std of the per-seed differences, bold (`*`) by `quality.bold`.

    python benchmarks/paired.py A.json B.json [--point base] [--point-b base]

A and B: result files of `quality.py --search` (their last line is the JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from quality import bold  # this folder's module


def last_json(path: Path) -> dict:
    """The JSON on the last non-empty line of a result file (the lines before it: the script's table)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        sys.exit(f"{path}: empty")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        sys.exit(f"{path}: its last line is not JSON ({exc}); give a result file of quality.py --search")
    if result.get("benchmark") != "quality-search":
        sys.exit(f"{path}: not a result of quality.py --search (benchmark: {result.get('benchmark')!r})")
    return result


def budget(result: dict) -> dict:
    """The evaluation settings a result was measured with (its budget, then its --set items' eval.* keys), in
    today's key names (older files spell 0.1.0's)."""
    from repre.config import flatten, migrate, parse_overrides

    given = [*(result.get("eval_budget") or []), *result.get("overrides", [])]
    settings = flatten(migrate(parse_overrides(given), refuse_removed=False))
    return {key: value for key, value in settings.items() if key.startswith("eval.")}


def by_seed(result: dict, point: str, path: Path) -> dict[str, dict[int, float]]:
    """{task: {seed: value}} of one point; seeds whose value is missing are left out."""
    if point not in result["values"]:
        sys.exit(f"{path}: no point {point!r}; it holds {', '.join(result['values'])}")
    return {task: {seed: v for seed, v in zip(result["seeds"], values, strict=True) if v is not None}
            for task, values in result["values"][point].items()}


def paired(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]]) -> dict[str, dict]:
    """Per task both hold: the seeds both hold, A - B per seed, and the differences' summary."""
    out = {}
    for task in a.keys() & b.keys():
        seeds = sorted(a[task].keys() & b[task].keys())
        diffs = [a[task][s] - b[task][s] for s in seeds]
        out[task] = {"seeds": seeds, "diffs": [round(d, 6) for d in diffs],
                     "mean": statistics.mean(diffs) if diffs else None,
                     "std": statistics.stdev(diffs) if len(diffs) > 1 else None, "bold": bold(diffs)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--point", default="base", help="A's search point (default base)")
    p.add_argument("--point-b", default=None, help="B's search point (default: --point)")
    args = p.parse_args()
    ra, rb = last_json(args.a), last_json(args.b)
    if ra["method"] != rb["method"]:
        sys.exit(f"A is {ra['method']}, B {rb['method']}: pair runs of one method")
    if budget(ra) != budget(rb):  # another subset or schedule measures something else
        sys.exit(f"A was evaluated with {budget(ra)}, B with {budget(rb)}: pair runs evaluated alike")
    point_b = args.point_b or args.point
    result = paired(by_seed(ra, args.point, args.a), by_seed(rb, point_b, args.b))
    if not any(r["seeds"] for r in result.values()):
        sys.exit(f"no seed in both: A has {ra['seeds']}, B {rb['seeds']}")
    print(f"{args.a.name} [{args.point}] - {args.b.name} [{point_b}], paired by seed (* bold by docs/results.md)")
    for task, r in sorted(result.items()):
        if not r["seeds"]:
            print(f"  {task:<8} no seed in both")
            continue
        per_seed = ", ".join(f"{s}: {d:+.4f}" for s, d in zip(r["seeds"], r["diffs"], strict=True))
        spread = f" ± {r['std']:.4f}" if r["std"] is not None else ""
        print(f"  {task:<8} {r['mean']:+.4f}{spread}{'*' if r['bold'] else '':<2} ({per_seed})")
    print(json.dumps({"benchmark": "quality-paired", "a": str(args.a), "point_a": args.point, "b": str(args.b),
                      "point_b": point_b, "method": ra["method"], "overrides_a": ra.get("overrides", []),
                      "overrides_b": rb.get("overrides", []), "tasks": result}))


if __name__ == "__main__":
    main()
