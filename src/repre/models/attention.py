"""Which attention kernel timm's blocks run in a training forward on a CPU.

timm's `Attention` (ViT) and `WindowAttention` (Swin) have two paths, chosen by their `fused_attn`
attribute: PyTorch's `scaled_dot_product_attention`, or the same formula as matrix products and a softmax.
On a CPU under bf16 autocast the fused kernel's backward is the slow part: forward + backward of an attention
module is faster unfused at every token count measured, while a forward alone is mostly faster fused, and in
fp32 the fused kernel is as fast or faster (docs/results.md, `benchmarks/cpu_attention.py`). So only the
modules that train switch (a momentum or teacher encoder keeps the fused forward), only for the training
forward and its backward (where a checkpointed block, `model.grad_checkpointing`, runs its forward again, which
must take the same path), and the evaluations run as before. What the
unfused path costs: it keeps the attention matrix for the backward (more peak memory), and its bf16 gradients
are slightly further from an fp64 reference (fp32: the same). timm's Swin already defaults to the unfused
path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def unfused_pays(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a training forward on `device` under autocast to `dtype` (fp32: none) should run unfused."""
    return device.type == "cpu" and dtype == torch.bfloat16


def trained_attention(model: nn.Module) -> list[nn.Module]:
    """timm's attention modules of `model` that have parameters to train (not a momentum encoder's)."""
    return [m for m in model.modules()
            if hasattr(m, "fused_attn") and any(p.requires_grad for p in m.parameters())]


@contextlib.contextmanager
def training_attention(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Inside the block (a training forward), the attention modules of `model` that train run the path that
    trains fastest on `device` under autocast to `dtype`; on exit each is put back as it was."""
    modules = trained_attention(model) if unfused_pays(device, dtype) else []
    before = [m.fused_attn for m in modules]
    for m in modules:
        m.fused_attn = False  # type: ignore[assignment]  # torch's __setattr__ stub: tensors and modules only
    try:
        yield
    finally:
        for m, fused in zip(modules, before, strict=True):
            m.fused_attn = fused
