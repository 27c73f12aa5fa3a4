"""Exact top-k search by cosine similarity (inner products of L2-normalized rows) in a bank of embeddings:
chunked matrix products over the bank (a memory map is read one chunk at a time, so a bank larger than memory
works). FAISS's flat index gives the same rows; it was slower on 2 CPU cores (docs/results.md, section 8)."""

from __future__ import annotations

import numpy as np
import torch

from repre.errors import UserError

BANK_CHUNK = 16384  # bank rows per matrix product: [1024 queries, 16384] float32 is 64 MiB
QUERY_CHUNK = 1024


def top_k(bank: np.ndarray, queries: torch.Tensor | np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bank [N, D] (an array or a memory map), queries [Q, D] float32 (a tensor or an array) -> (similarities
    [Q, k] float32, bank rows [Q, k] int64), most similar first."""
    queries = torch.as_tensor(np.array(queries) if isinstance(queries, np.ndarray) else queries)  # a copy of an
    # array: rows of a memory map are read-only, which torch warns of
    if not 0 < k <= len(bank):
        raise UserError(f"k={k} neighbours asked of a bank of {len(bank)} rows")
    return torch_top_k(bank, queries, k)


def torch_top_k(bank: np.ndarray, queries: torch.Tensor, k: int,
                chunk: int = BANK_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact search of a bank [N, D] (an array or a memory map) for queries [M, D], L2-normalized: each chunk
    of the bank against each chunk of queries, keeping a running top k -> (similarities, bank rows) [M, k]."""
    sims, rows = [], []
    for q in queries.float().split(QUERY_CHUNK):
        best_s, best_r = torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.int64)
        for start in range(0, len(bank), chunk):
            # a copy: memory maps are read-only
            block = torch.from_numpy(np.array(bank[start:start + chunk], dtype=np.float32))
            s, r = (q @ block.t()).topk(min(k, len(block)), dim=1)  # [q, <=k]
            s, r = torch.cat([best_s, s], dim=1), torch.cat([best_r, r + start], dim=1)
            best_s, pick = s.topk(min(k, s.shape[1]), dim=1)
            best_r = r.gather(1, pick)
        sims.append(best_s)
        rows.append(best_r)
    return torch.cat(sims), torch.cat(rows)
