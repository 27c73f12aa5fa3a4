"""`repre neighbors`' exact search (chunked matrix products, `repre.core.search`) against FAISS's flat
inner-product index, the library that would do it.

    pip install faiss-cpu
    python benchmarks/search_speed.py [--rows 200000] [--dim 384] [--queries 8,1024] [--repeats 3] [--k 5]

A bank of random L2-normalized rows (float32, a memory map on disk as `repre embed` writes it) and queries
drawn from it; each search's time (median of --repeats; FAISS's index built on each call, as a command run
once builds it) and whether both give the same rows. Prints a JSON line last.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from repre.core.search import BANK_CHUNK, torch_top_k


def faiss_top_k(bank: np.ndarray, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact search with FAISS's flat inner-product index, the bank added a chunk at a time (a memory map)."""
    import faiss

    index = faiss.IndexFlatIP(bank.shape[1])
    for start in range(0, len(bank), BANK_CHUNK):
        index.add(np.ascontiguousarray(bank[start:start + BANK_CHUNK], dtype=np.float32))
    sims, rows = index.search(np.ascontiguousarray(queries.float().numpy()), k)
    return torch.from_numpy(sims), torch.from_numpy(rows).long()


def timed(fn, repeats: int) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", default="8,1024", help="comma-separated query counts")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    try:
        import faiss  # noqa: F401  (before any timing: the comparison needs it)
    except ImportError:
        p.error("faiss is not installed: pip install faiss-cpu")
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.npy"
        bank = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.rows, args.dim))
        for start in range(0, args.rows, 65536):
            block = rng.standard_normal((min(65536, args.rows - start), args.dim), dtype=np.float32)
            bank[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        bank.flush()
        bank = np.load(path, mmap_mode="r")
        for q in (int(n) for n in args.queries.split(",")):
            queries = torch.from_numpy(np.array(bank[rng.choice(args.rows, q, replace=False)]))
            t_torch, (s_torch, r_torch) = timed(lambda x=queries: torch_top_k(bank, x, args.k), args.repeats)
            t_faiss, (s_faiss, r_faiss) = timed(lambda x=queries: faiss_top_k(bank, x, args.k), args.repeats)
            same = bool(torch.equal(r_torch, r_faiss))
            results.append({"queries": q, "torch_s": t_torch, "faiss_s": t_faiss, "faiss_over_torch": t_faiss / t_torch,
                            "same_rows": same, "max_sim_diff": float((s_torch - s_faiss).abs().max())})
            print(f"{q:>6} queries: torch {t_torch:.3f} s, faiss {t_faiss:.3f} s (faiss / torch "
                  f"{t_faiss / t_torch:.2f}), same rows: {same}", flush=True)
    import faiss

    print(json.dumps({"benchmark": "search_speed", "rows": args.rows, "dim": args.dim, "k": args.k,
                      "threads": torch.get_num_threads(), "results": results,
                      "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                   "faiss": getattr(faiss, "__version__", None), "numpy": np.__version__}}))


if __name__ == "__main__":
    main()
