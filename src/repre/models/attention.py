"""Which attention kernel timm's blocks run while a model trains on a CPU.

timm's `Attention` (ViT) and `WindowAttention` (Swin) have two paths, chosen by their `fused_attn`
attribute: PyTorch's `scaled_dot_product_attention`, or the same formula as matrix products and a softmax.
On a CPU under bf16 autocast the fused kernel's backward is the slow one: a training step of the attention
alone is 1.3-5.2x faster unfused at 10 to 785 tokens, while in fp32 and at inference the fused kernel is
about as fast or faster (`benchmarks/cpu_attention.py`, in docs/results.md). Both paths are as close to an
fp64 reference in both precisions (bf16: output 5.9e-3 relative error both, gradients 6.2e-3 fused and
7.1e-3 unfused), so what changes is the speed. timm's Swin already defaults to the unfused path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def unfused_pays(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether training on `device` with autocast to `dtype` (fp32: none) should run the unfused path."""
    return device.type == "cpu" and dtype == torch.bfloat16


@contextlib.contextmanager
def training_attention(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Inside the block, every timm attention module of `model` runs the path that trains fastest on `device`
    with autocast to `dtype`; on exit each is put back as it was (the evaluations keep the fused forward)."""
    modules = [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    before = [m.fused_attn for m in modules]
    if unfused_pays(device, dtype):
        for m in modules:
            m.fused_attn = False
    try:
        yield
    finally:
        for m, fused in zip(modules, before, strict=True):
            m.fused_attn = fused
