"""What a linear probe reads from a frozen encoder: the class token, the mean patch token, or both, of each of
the last k blocks after the final norm (DINO's linear evaluation, eval_linear.py:166-170), concatenated in
block order; a Swin (no class token): the mean of each of the last k stages' maps. A ViT whose final norm follows
its pooling (global_pool='avg': timm's fc_norm, MAE's) has it applied to the class token and to the mean.

DINO adds the mean patch token of the last block alone, and interleaves it with the class token
(eval_linear.py:168-170, which runs only with n = 1); `both` with 1 block concatenates the two instead: the
same features in another order, which a linear head with i.i.d. initial weights trains alike."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from repre.errors import UserError
from repre.models.backbone import Backbone


def blocks_hold_prefix(encoder: Backbone) -> bool:
    """Whether timm's `forward_intermediates` of a ViT returns each block's prefix tokens (the class token): not
    CaiT's or ConViT's, whose class token joins after the blocks it reads."""
    return _takes_prefix(type(encoder.model))  # type: ignore[arg-type]  # a class is hashable (python/mypy#20409)


@functools.cache
def _takes_prefix(model_class: type[Any]) -> bool:
    """`blocks_hold_prefix` of a model class (read once: the probe asks at every batch). Any class: timm's ViTs
    share none that declares `forward_intermediates`."""
    return "return_prefix_tokens" in inspect.signature(model_class.forward_intermediates).parameters


def check_layout(encoder: Backbone, kind: str, blocks: int) -> None:
    """Raise UserError when `encoder` cannot give features `kind` of its last `blocks` blocks."""
    if kind in ("cls", "both") and not encoder.has_class_token:
        raise UserError(f"{encoder.name} has no class token: use eval.linear.features=avg (or leave it null)")
    if kind in ("cls", "both") and not encoder.hierarchical and not blocks_hold_prefix(encoder):
        raise UserError(f"{encoder.name}'s blocks hold no class token (it joins after them): the probe reads the "
                        "class token of each block; use eval.linear.features=avg")
    if not 1 <= blocks <= encoder.num_units:
        units = "stages" if encoder.hierarchical else "blocks"
        raise UserError(f"eval.linear.blocks={blocks}: the probe reads the features of the encoder's last "
                        f"{blocks} {units}; {encoder.name} has {encoder.num_units}, so give 1 to {encoder.num_units}")


def feature_dim(encoder: Backbone, kind: str, blocks: int) -> int:
    """The width of `token_features`: blocks x D (x 2 for both); a Swin: the channels of its last stages."""
    if encoder.hierarchical:
        return sum(encoder.unit_channels[-blocks:])
    return blocks * encoder.embed_dim * (2 if kind == "both" else 1)


def token_features(encoder: Backbone, x: torch.Tensor, kind: str, blocks: int) -> torch.Tensor:
    """Normalized images x [B, 3, H, W] -> features [B, feature_dim(encoder, kind, blocks)]: per block, the class
    token then the mean patch token (registers excluded)."""
    model: Any = encoder.model  # its forward_intermediates is its own class's (timm's ViTs share none declaring it)
    if encoder.hierarchical:
        maps = encoder.unit_maps(x, range(encoder.num_units - blocks, encoder.num_units))  # the last `blocks` stages
        return torch.cat([m.float().mean(dim=(2, 3)) for m in maps], dim=1)
    asks = {"return_prefix_tokens": kind != "avg"} if blocks_hold_prefix(encoder) else {}
    outs = model.forward_intermediates(x, indices=blocks, norm=True, output_fmt="NLC", intermediates_only=True,
                                       **asks)
    norm = encoder.pooled_norm or torch.nn.Identity()  # a ViT norming after pooling (MAE's fc_norm): here
    parts = []
    for out in outs:
        tokens, prefix = out if isinstance(out, tuple) else (out, None)
        if kind in ("cls", "both"):
            parts.append(norm(prefix[:, 0]))
        if kind in ("avg", "both"):
            parts.append(norm(tokens.mean(dim=1)))
    return torch.cat(parts, dim=1)
