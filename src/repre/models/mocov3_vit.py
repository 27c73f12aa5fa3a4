"""MoCo v3's own ViT on a timm model (moco-v3 vits.py, `VisionTransformerMoCo`): a fixed 2-D sin-cos position
embedding and MoCo v3's initialization. The result stays a plain timm VisionTransformer: the embedding is its
`pos_embed` (frozen), so an export loads in timm as any other."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from repre.core.compat import class_token_first, replace_pos_embed


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed position embedding of a grid of patches -> [1, 1 + h*w, dim] (a zero row for the class token).

    The patch at row r, column c (token r*w + c) gets [sin(r*o), cos(r*o), sin(c*o), cos(c*o)], with
    o_k = temperature^(-k / (dim/4)) for k < dim/4: MoCo v3's formula (vits.py builds it from a meshgrid of the
    grid's two axes; on the square grids it is used on, its first axis is the row)."""
    h, w = grid
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position embedding needs an embedding width divisible by 4, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    r, c = rows.flatten()[:, None] * omega, cols.flatten()[:, None] * omega  # [h*w, dim/4]
    patches = torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), patches])[None]


def uniform_xavier_bound(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


@torch.no_grad()
def mocov3_init_(model: nn.Module) -> None:
    """Re-initialize a timm VisionTransformer as MoCo v3 does: xavier-uniform linear layers, with the fused q/k/v
    matrix bounded as three separate ones; zero biases; class token N(0, 1e-6); the patch projection
    xavier-uniform over its 3*p*p inputs; and the fixed sin-cos position embedding, excluded from training."""
    if not class_token_first(model):
        raise ValueError("MoCo v3's ViT has exactly one prefix token, the class token, and a position embedding "
                         "that covers it")
    vit: Any = model  # its members beyond nn.Module's are its timm class's (VisionTransformer, Eva, ...)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            fan_out, fan_in = module.weight.shape
            if "qkv" in name:  # q, k and v each [D, D]
                fan_out //= 3
            module.weight.uniform_(-uniform_xavier_bound(fan_in, fan_out), uniform_xavier_bound(fan_in, fan_out))
            if module.bias is not None:
                module.bias.zero_()
    nn.init.normal_(vit.cls_token, std=1e-6)
    proj = vit.patch_embed.proj
    bound = uniform_xavier_bound(proj.weight[0].numel(), vit.embed_dim)  # 3 * p * p inputs
    proj.weight.uniform_(-bound, bound)
    if proj.bias is not None:  # a patch projection without one (CLIP's) keeps none
        proj.bias.zero_()
    vit.pos_embed.copy_(sincos_2d(tuple(vit.patch_embed.grid_size), vit.embed_dim))
    vit.pos_embed.requires_grad = False
    if getattr(model, "dynamic_img_size", False):  # DINO's local crops: their grid's own table, not a resampling
        replace_pos_embed(model, _sincos_pos_embed)


def _sincos_pos_embed(self: Any, x: torch.Tensor) -> torch.Tensor:
    """timm VisionTransformer._pos_embed with the fixed sin-cos table of the input's own grid (the one
    `Backbone.pos_embed_at` gives an evaluation at another size): x [B, h, w, D] (dynamic_img_size) -> tokens
    [B, 1 + h*w, D], the class token first."""
    b, h, w, d = x.shape
    if (h, w) == tuple(self.patch_embed.grid_size):
        pos = self.pos_embed
    else:
        pos = sincos_2d((h, w), d).to(x.device, self.pos_embed.dtype)
    x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, d)], dim=1)
    return self.pos_drop(x + pos)


def has_fixed_sincos(model: nn.Module) -> bool:
    """Whether `model`'s position embedding is the frozen 2-D sin-cos one of its patch grid (`mocov3_init_`)."""
    pos = getattr(model, "pos_embed", None)
    if pos is None or pos.requires_grad or pos.shape[-1] % 4:
        return False
    vit: Any = model  # as in mocov3_init_
    expected = sincos_2d(tuple(vit.patch_embed.grid_size), vit.embed_dim).to(pos.device, pos.dtype)
    return pos.shape == expected.shape and bool(torch.allclose(pos, expected, atol=1e-5))
