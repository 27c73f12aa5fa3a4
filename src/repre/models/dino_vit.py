"""DINO's own ViT where it differs from timm's (dino vision_transformer.py, `VisionTransformer`), on a timm model:
the class token's initialization, and how a smaller input (a local crop) gets its position embedding.

timm resamples the embedding for another grid with antialiasing (`resample_abs_pos_embed`): from 14 x 14 to
DINO's 6 x 6 local grid that is a low-pass filter, and a freshly initialized (noisy) table keeps about 0.36 of
its spread. DINO samples the table with plain bicubic interpolation at the scale (n + 0.1) / N (lines 174-194),
which keeps about 0.86. `repre eval segment`, which sets another input size for good, resamples DINO's way too.
The model stays a plain timm VisionTransformer with timm's keys, so an export loads in timm as any other (timm
then resamples its own way, at sizes other than the exported one).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from repre.core.compat import class_token_first, replace_pos_embed

OFFSET = 0.1  # dino vision_transformer.py:184-186, "a small number to avoid floating point error in the interpolation"


def dino_resample(pos_embed: torch.Tensor, grid: tuple[int, int], trained: tuple[int, int]) -> torch.Tensor:
    """A position embedding [1, 1 + H*W, D] (class token first) of the `trained` grid (H, W) -> [1, 1 + h*w, D]
    for `grid` (h, w), as DINO's `interpolate_pos_encoding`: bicubic, no antialiasing, at the scale
    (n + 0.1) / N per axis, in float32."""
    if tuple(grid) == tuple(trained):
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    dim = patches.shape[-1]
    patches = patches.float().reshape(1, *trained, dim).permute(0, 3, 1, 2)  # [1, D, H, W]
    scale = tuple((n + OFFSET) / m for n, m in zip(grid, trained, strict=True))
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)  # [1, h*w, D]
    return torch.cat([cls, patches], dim=1)


def _pos_embed(self: Any, x: torch.Tensor) -> torch.Tensor:
    """timm VisionTransformer._pos_embed with `dino_resample`: x [B, h, w, D] (dynamic_img_size) -> tokens
    [B, 1 + h*w, D], the class token first, the position embedding added."""
    b, h, w, d = x.shape
    pos = dino_resample(self.pos_embed, (h, w), tuple(self.patch_embed.grid_size))
    x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, d)], dim=1)
    return self.pos_drop(x + pos)


@torch.no_grad()
def dino_init_(model: nn.Module) -> None:
    """Make a timm VisionTransformer DINO's: the class token N(0, 0.02) truncated at ±2 (dino
    vision_transformer.py:161-162; timm draws it N(0, 1e-6)), and, where the model takes inputs of other sizes
    (`dynamic_img_size`), DINO's resampling of the position embedding for them. timm's other initialization is
    DINO's already: truncated N(0, 0.02) linear layers with zero biases, N(0, 0.02) position embedding."""
    if not class_token_first(model):
        raise ValueError("DINO's ViT has exactly one prefix token, the class token, and a position embedding "
                         "that covers it")
    vit: Any = model  # its members beyond nn.Module's are its timm class's (VisionTransformer, Eva, ...)
    nn.init.trunc_normal_(vit.cls_token, std=0.02)
    if vit.dynamic_img_size:
        replace_pos_embed(model, _pos_embed)
