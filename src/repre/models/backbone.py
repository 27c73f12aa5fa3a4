"""The encoder: a thin wrapper over a timm vision transformer.

One forward returns what both branches need: the pooled embedding for the contrastive heads and, when
asked, the feature maps of the tap blocks for the RePre decoder, from the same pass (`forward_intermediates`,
which honours timm's gradient checkpointing since timm 1.0.16). The wrapped `model` is a plain timm model:
its state dict has timm's key names, which is what export writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn

from repre.errors import UserError

# Small configurations for small images: (timm architecture, keyword arguments). Image size comes from data.
SMALL_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_femto_patch4": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=96, depth=6, num_heads=3)),
    "vit_pico_patch4": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=128, depth=6, num_heads=4)),
    "vit_tiny_patch4": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=192, depth=12, num_heads=3)),
}


def resolve_arch(arch: str, image_size: int, drop_path: float, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A config's `model.arch` -> the timm name and the kwargs that rebuild it (`timm.create_model(name, **kw)`)."""
    name, kwargs = SMALL_CONFIGS.get(arch, (arch, {}))
    kwargs = {**kwargs, "img_size": image_size, **extra}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    return name, kwargs


def create_timm(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    if not timm.is_model(arch.split(".")[0]):
        near = timm.list_models(f"*{arch.split('_')[0]}*")[:5] or timm.list_models("vit_*")[:5]
        raise UserError(f"unknown model.arch {arch!r}; e.g. {', '.join(near)} or {', '.join(SMALL_CONFIGS)}")
    try:
        return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise UserError(f"cannot build {arch} with {kwargs}: {exc}") from None


class Backbone(nn.Module):
    """x: [B, 3, H, W] -> (pooled [B, D], maps: list of [B, D, H/p, W/p], one per requested tap)."""

    def __init__(self, arch: str, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.arch, self.kwargs = arch, dict(kwargs)
        self.model = create_timm(arch, kwargs)
        if not all(hasattr(self.model, a) for a in ("forward_intermediates", "blocks", "patch_embed")):
            raise UserError(
                f"{arch} is not a timm vision transformer with forward_intermediates, blocks and patch_embed; "
                "use a ViT (vit_*, deit_*) or a small config such as vit_pico_patch4"
            )
        self.embed_dim: int = self.model.num_features
        self.depth: int = len(self.model.blocks)
        self.patch_size: int = int(self.model.patch_embed.patch_size[0])

    def forward(self, x: torch.Tensor, taps: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not taps:
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True), []
        final, maps = self.model.forward_intermediates(x, indices=list(taps), output_fmt="NCHW", norm=False)
        return self.model.forward_head(final, pre_logits=True), maps

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def freeze_patch_embed(self) -> None:
        """MoCo v3's stability trick: keep the random patch projection fixed."""
        for p in self.model.patch_embed.parameters():
            p.requires_grad = False


def resolve_taps(spec: int | Sequence[int], depth: int) -> list[int]:
    """`recon.taps` -> sorted 0-based block indices.

    An int n: n evenly spaced blocks ending with the last, `ceil((i + 1) * depth / n) - 1`
    (depth 12 -> [2, 5, 8, 11], depth 6 -> [1, 2, 4, 5]). A list: block indices, negatives from the end.
    """
    if isinstance(spec, int):
        if not 1 <= spec <= depth:
            raise UserError(f"recon.taps={spec}: need between 1 and {depth} taps for a {depth}-block encoder")
        return [math.ceil((i + 1) * depth / spec) - 1 for i in range(spec)]
    if not spec:
        raise UserError("recon.taps is an empty list; give block indices or a count")
    out = []
    for t in spec:
        if not -depth <= t < depth:
            raise UserError(f"recon.taps index {t} out of range for a {depth}-block encoder (0..{depth - 1})")
        out.append(t % depth)
    if len(set(out)) != len(out):
        raise UserError(f"recon.taps {list(spec)} names a block twice")
    return sorted(out)
