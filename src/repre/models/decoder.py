"""The RePre decoder: fuse encoder features from several depths and reconstruct the input pixels.

    taps (deepest last) --1x1 conv + GN--> laterals [B, W, h_i, w_i]
    top-down: x = block(lat[-1]); for shallower taps: x = block(resize(x) + lat[i])
    x2 upsampling steps (bilinear or nearest + 3x3 conv + GN + GELU), width halving each step, not below MIN_WIDTH,
    down to stride `out_stride`
    1x1 conv to 3 x out_stride² channels, pixel shuffle to full resolution (out_stride 1: plain 3 channels)
    the view's size: the maps of a Swin whose patch merging padded an odd grid cover a larger image, padded
    at the bottom and right, whose top-left is the view (cropped); maps of a smaller image are interpolated.

One implementation serves plain transformers (every tap at stride p) and hierarchical ones (taps at
different strides: the deeper map is upsampled to the shallower one before the add, U-Net style).
GroupNorm, not BatchNorm: the decoder behaves the same for any number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

MIN_WIDTH = 8  # the x2 steps halve the width, not below this (a narrower `width` is raised to it at the first step)
UPSAMPLE = ("bilinear", "nearest")  # the x2 steps' interpolation (recon.upsample)


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm of 8 groups, or fewer where `channels` does not divide by 8 (a narrow `width`)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


class Lateral(nn.Sequential):
    """1x1 conv + GroupNorm: a tap map [B, c_in, h, w] -> [B, width, h, w] (contiguous).

    A map whose channels are its innermost dimension (a ViT's: a view of its [B, h, w, C] tokens) is projected
    as a matmul over that layout, with the convolution's own weight: the same values, without first copying
    the map into NCHW, and a matmul's backward instead of a 1x1 convolution's, both costly on a CPU in bf16
    (docs/results.md, section 5.1). Other maps (a Swin's, contiguous NCHW) go through the convolution, which
    reads them as they are."""

    def __init__(self, c_in: int, width: int) -> None:
        super().__init__(nn.Conv2d(c_in, width, 1, bias=False), _norm(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm = cast(nn.Conv2d, self[0]), self[1]  # as __init__ builds them
        if x.stride(1) == 1:
            x = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1)).permute(0, 3, 1, 2).contiguous()
        else:
            x = conv(x)
        return norm(x)


class ConvBlock(nn.Sequential):
    """3x3 conv + GroupNorm + GELU: [B, c_in, h, w] -> [B, c_out, h, w]."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), _norm(c_out), nn.GELU())


class Decoder(nn.Module):
    """maps: list of [B, C_i, H/s_i, W/s_i] (shallow to deep) -> pixels [B, 3, H, W].

    Each map through a 1x1 lateral to `width` channels; fused top-down at the finest input stride (the deepest
    first, each sum through a 3x3 block); then x2 steps (3x3 blocks, channels halved, not below MIN_WIDTH) until
    `out_stride`, where a 1x1 conv predicts out_stride x out_stride pixels per position (pixel shuffle)."""

    def __init__(
        self,
        in_dims: Sequence[int],
        in_stride: int,
        width: int = 128,
        *,
        upsample: str = "bilinear",
        out_stride: int = 1,
    ) -> None:
        super().__init__()
        if out_stride > in_stride:
            raise ValueError(f"out_stride {out_stride} is coarser than the finest input stride {in_stride}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width={width!r}: the decoder's channels, an int of at least 1")
        if upsample not in UPSAMPLE:
            raise ValueError(f"upsample={upsample!r}: one of {', '.join(UPSAMPLE)}")
        self.in_stride, self.mode, self.out_stride = in_stride, upsample, out_stride
        self.laterals = nn.ModuleList(Lateral(c, width) for c in in_dims)
        self.fuse = nn.ModuleList(ConvBlock(width, width) for _ in in_dims)
        steps, widths = int(math.log2(in_stride // out_stride)), [width]
        for _ in range(steps):
            widths.append(max(MIN_WIDTH, widths[-1] // 2))
        self.up = nn.ModuleList(ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.head = nn.Conv2d(widths[-1], 3 * out_stride**2, 1)

    def forward(self, maps: Sequence[torch.Tensor], out_size: int | tuple[int, int]) -> torch.Tensor:
        """maps [B, C_i, h_i, w_i] -> [B, 3, *out_size] (the views' size, or its side): the padded bottom and
        right rows cut off where the map grid times the input stride covers more (a Swin's padded grid), a last
        resize where it does not reach it."""
        out_size = (out_size, out_size) if isinstance(out_size, int) else out_size
        lat = [layer(m) for layer, m in zip(self.laterals, maps, strict=True)]
        x = self.fuse[-1](lat[-1])
        for i in range(len(lat) - 2, -1, -1):
            if x.shape[-2:] != lat[i].shape[-2:]:
                x = self._to_grid(x, lat[i].shape[-2:])
            x = self.fuse[i](x + lat[i])
        for block in self.up:
            x = block(self._resize(x, scale_factor=2.0))
        x = F.pixel_shuffle(self.head(x), self.out_stride)  # the 1x1 conv and the resize commute: 3 channels
        if x.shape[-2:] != tuple(out_size):
            larger = x.shape[-2] >= out_size[0] and x.shape[-1] >= out_size[1]
            x = x[..., :out_size[0], :out_size[1]] if larger else self._resize(x, size=tuple(out_size))
        return x

    def _to_grid(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """A deeper map [B, W, h, w] -> the shallower map's grid: upsampled by the ratio of their strides (a power
        of two), then its padded bottom and right rows cut off. A deeper grid is ceil(shallower / ratio) (timm's
        patch merging pads an odd grid at its end): the ratio is the power of two at or above grid / h, and
        the cells stay aligned, where a resize to the grid's size would stretch them (7 cells from 4, not 8)."""
        scale = [2 ** math.ceil(math.log2(g / n)) for g, n in zip(grid, x.shape[-2:], strict=True)]
        x = self._resize(x, scale_factor=tuple(float(f) for f in scale))
        return x[..., :grid[0], :grid[1]] if tuple(x.shape[-2:]) != tuple(grid) else x

    def _resize(self, x: torch.Tensor, **kw) -> torch.Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, mode="nearest", **kw)
        return F.interpolate(x, mode=self.mode, align_corners=False, **kw)
