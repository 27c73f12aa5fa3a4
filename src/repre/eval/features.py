"""The loop every frozen-feature evaluation shares: a module in eval mode, no gradients, autocast on the run's
device, each batch's outputs brought back to the CPU as float32."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from repre.core.runtime import Runtime


@torch.no_grad()
def frozen_outputs(module: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], rt: Runtime,
                   fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`fn(x)` for each (x, labels) of `batches` (x: normalized images [B, 3, H, W]) -> (the outputs
    concatenated along dim 0, float32 on the CPU; the labels concatenated, or None). `module` runs in eval
    mode and goes back to its mode after."""
    was_training = module.training
    module.eval()
    outputs, labels = [], []
    try:
        for x, y in batches:
            with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp):
                out = fn(x.to(rt.device, non_blocking=True))
            outputs.append(out.float().cpu())
            if y is not None:
                labels.append(y)
    finally:
        module.train(was_training)
    return torch.cat(outputs), (torch.cat(labels) if labels else None)
