"""Loss-balance diagnostics for hybrid objectives (contrastive + lambda * reconstruction).

Every `train.diagnose_every` steps the `LossBalance` callback (engine/callbacks.py) measures the gradient
each loss sends into the shared encoder (two extra backward passes through the graph of that step, at those
steps alone) and logs their norms and cosine.
`TrendWatch` warns when one loss keeps rising while the other falls.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from repre.core import dist

log = logging.getLogger("repre")


def loss_balance(encoder: nn.Module, contrastive: torch.Tensor, recon: torch.Tensor,
                 scale: torch.Tensor | float = 1.0) -> dict[str, torch.Tensor]:
    """Norms of d(contrastive)/d(encoder) and d(lambda * recon)/d(encoder), and the cosine between them; under
    torchrun, of the global batch's gradients (each process's averaged, as DDP averages the step's: every
    process calls this at the same steps). `scale`: fp16's loss scale (`LossScaler.current()`), by which each
    loss is multiplied before its backward and its gradient divided after, as the step's own (1 in fp32 and
    bf16): unscaled, the reconstruction's gradient per pixel (1 / the batch's pixels) is below fp16's smallest
    normal number, and its norm comes out off, or 0 at a GPU's batch."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    flat = []
    for loss in (contrastive, recon):
        grads = torch.autograd.grad(loss * scale, params, retain_graph=True, allow_unused=True)
        local = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().float()
                           for g, p in zip(grads, params, strict=True)]) / scale
        flat.append(dist.all_reduce_sum(local) / dist.world_size())
    a, b = flat
    return {
        "diag_grad_norm_contrastive": a.norm(),
        "diag_grad_norm_recon": b.norm(),
        "diag_grad_cosine": F.cosine_similarity(a, b, dim=0),
    }


class TrendWatch:
    """Warns once per direction when, over the last 2 x `window` logged values, one loss rose by more than
    `tol` (relative) while the other fell by more than `tol`."""

    def __init__(self, window: int = 3, tol: float = 0.02) -> None:
        self.window, self.tol = window, tol
        self.history: list[tuple[float, float]] = []
        self.warned: set[str] = set()

    def update(self, contrastive: float, recon: float) -> str | None:
        self.history.append((contrastive, recon))
        w = self.window
        del self.history[: -2 * w]  # all it compares
        if len(self.history) < 2 * w:
            return None
        before = [sum(v[i] for v in self.history[-2 * w : -w]) / w for i in (0, 1)]
        after = [sum(v[i] for v in self.history[-w:]) / w for i in (0, 1)]
        change = [(a - b) / max(abs(b), 1e-12) for a, b in zip(after, before, strict=True)]
        for rising, falling, advice in ((1, 0, "raise recon.weight"), (0, 1, "lower recon.weight")):
            name = ("contrastive", "reconstruction")[rising]
            if change[rising] > self.tol and change[falling] < -self.tol and name not in self.warned:
                self.warned.add(name)
                message = (f"the {name} loss rose {change[rising]:+.1%} over the last {w} logs while the other fell "
                           f"{change[falling]:+.1%}: the two objectives compete; consider to {advice}")
                log.warning(message)
                return message
        return None
