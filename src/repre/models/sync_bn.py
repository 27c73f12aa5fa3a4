"""Batch norm with statistics over the global batch of all processes, on any backend (gloo on CPU, NCCL).

torch's nn.SyncBatchNorm refuses CPU tensors; this one exchanges each process's per-channel (count, mean,
variance) with a differentiable all_gather, so the gradient also flows into the other processes' inputs, as
batch norm over the concatenated batch would. Only 2C + 1 numbers a layer travel (not the activations). In a
single process, or in eval mode, it is plain batch norm.
"""

from __future__ import annotations

import torch
from torch import nn

from repre.core.compat import BatchNormBase
from repre.core.dist import all_gather_grad, is_distributed


class SyncBatchNorm(BatchNormBase):
    """Drop-in for BatchNorm1d/2d ([N, C] or [N, C, ...]) with the same parameters, buffers and state-dict keys."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.ndim < 2:
            raise ValueError(f"expected input of at least 2 dimensions [N, C, ...], got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.ndim)]
        xf = x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], device=x.device)
        local = torch.cat([count, xf.mean(dims), xf.var(dims, unbiased=False)])  # [2C + 1]
        stats = all_gather_grad(local)  # [world, 2C + 1], differentiable
        n, means, variances = stats[:, :1].detach(), stats[:, 1 : 1 + x.shape[1]], stats[:, 1 + x.shape[1] :]
        total = n.sum()
        mean = (n * means).sum(0) / total
        var = (n * (variances + (means - mean) ** 2)).sum(0) / total  # biased, over the global batch
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), total)
        shape = [1, -1] + [1] * (x.ndim - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor) -> None:
        """As torch's batch norm: an EMA (or, with momentum None, the cumulative mean) of the batch statistics,
        the variance unbiased."""
        # the buffers of a norm that tracks its statistics (torch types them Tensor | None, for one that does not)
        assert self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * total / (total - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every batch-norm layer under `module` (in place; returns the module, or its replacement when
    `module` itself is one) by a SyncBatchNorm holding the same tensors."""
    if isinstance(module, BatchNormBase) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(sync, name, tensor)  # the same objects: requires_grad (frozen EMA copies), device and dtype kept
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        replaced = convert_sync_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module
