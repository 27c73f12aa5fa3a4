"""What a run trains: `RePre`, a method with the reconstruction branch (`repre.branch`) beside it, or `Baseline`.

`RePre(method, taps=..., ...)` asks the method for its online encoder's tap maps (from the forward the
contrastive loss already runs) and hands them to its `repre.branch.ReconstructionBranch`, which decodes them to
pixels; the total adds lambda * reconstruction loss:

    out = method.ema_then_forward(views, momentum, taps=branch.taps)  # a MethodOutput: the method's loss, the
    recon = branch.loss(out.maps, out.stacked_views)                  # tap maps and the views they came from
    loss = out.loss + weight * recon

With views_per_image=1 (recon.views) the decoder reconstructs one global view of each image (`one_view_rows`):
the encoder still sees both, the decoder's cost halves.

With the branch disabled no decoder exists and the plain method is trained: the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from repre.branch import ReconstructionBranch
from repre.core.dist import rank
from repre.methods.base import Method
from repre.models.backbone import Backbone


def one_view_rows(n: int, offset: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """The rows of [x1; x2] (n = 2B rows: both global views of B images) that reconstruct one view of each
    image: [B] indices, the first view for even and the second for odd images. `offset`: the global index of
    this process's first image, so that N processes, each with a contiguous share of the global batch (repre's
    indexed sampler), reconstruct the views one process would. Any other order still reconstructs one view of
    each image."""
    b, first = n // 2, offset % 2
    return torch.cat([torch.arange(first, b, 2, device=device), torch.arange(b + 1 - first, n, 2, device=device)])


# where a PretrainingModel's state dict (a checkpoint's "model") holds its parts: the method's modules under
# METHOD + their attribute names (encoder, projector, teacher_encoder, ...), RePre's branch (its decoder) under
# BRANCH; a method's encoder is a Backbone, its timm model's weights under ENCODER_WEIGHTS (`encoder_prefix`)
METHOD, BRANCH, ENCODER_WEIGHTS = "method.", "branch.", "model."


def encoder_prefix(key: str = "encoder") -> str:
    """"method.KEY.": the state-dict prefix of the method's encoder `key` (its timm model's weights: this
    + ENCODER_WEIGHTS)."""
    return f"{METHOD}{key}."


class PretrainingModel(nn.Module):
    """What a run trains, `Baseline` or `RePre`: a method (`.method`), maybe with a branch beside it.
    forward(views, momentum, labels, local_views) -> {"loss": what the optimizer minimizes,
    "loss_contrastive": the method's own loss, "loss_recon", and the method's other 0-d values}."""

    recon_weight: float = 0.0  # λ, the reconstruction loss's weight in "loss" (a Baseline has none)

    def __init__(self, method: Method) -> None:
        if not isinstance(getattr(method, "encoder", None), Backbone):  # a bare timm model: `taps` reach its forward
            raise TypeError(f"{type(method).__name__}.encoder must be a repre Backbone (whose forward takes the taps "
                            "and returns (pooled, maps)), not " + type(getattr(method, "encoder", None)).__name__
                            + ": set self.encoder = Backbone.from_model(model) in its __init__, as MoCoV3's")
        super().__init__()
        self.method = method

    @property
    def encoder(self) -> Backbone:
        return self.method.encoder

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The method's weight-decay rule over every parameter of this module (a decoder included)."""
        return self.method.param_groups(weight_decay, module=self)


class Baseline(PretrainingModel):
    """The method alone: the baseline every RePre result is compared with ("loss_recon" 0)."""

    def forward(
        self, views: torch.Tensor, momentum: float, labels: torch.Tensor | None = None,
        local_views: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """views [B, 2, 3, H, W] (local_views [B, L, 3, h, w]: DINO's) -> the method's losses ("loss_recon" 0)."""
        out = self.method.ema_then_forward(views, momentum, labels, local_views)
        zero = torch.zeros((), device=out.loss.device)
        return {"loss": out.loss, **out.logged, "loss_contrastive": out.loss, "loss_recon": zero}


class RePre(PretrainingModel):
    """A method plus the reconstruction branch (`repre.branch.ReconstructionBranch` on the method's online encoder)."""

    def __init__(self, method: Method, *, taps: int | Sequence[int], recon_weight: float = 1.0,
                 views_per_image: int = 2, **branch: Any) -> None:
        """`taps`: the encoder units the branch reads (`ReconstructionBranch`: a count, or block indices);
        `recon_weight`: λ; `views_per_image`: the global views reconstructed per image, 2 or 1 (`one_view_rows`);
        `branch`: the `ReconstructionBranch` arguments (width, norm_pix, upsample, out_stride)."""
        if views_per_image not in (1, 2):
            raise ValueError(f"views_per_image={views_per_image!r}: the global views reconstructed per image are "
                             "1 or 2")
        super().__init__(method)
        self.branch = ReconstructionBranch(method.encoder, taps, **branch)
        self.recon_weight = recon_weight
        self.views_per_image = views_per_image

    def forward(
        self, views: torch.Tensor, momentum: float, labels: torch.Tensor | None = None,
        local_views: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """views [B, 2, 3, H, W] (local_views [B, L, 3, h, w]: DINO's) -> {"loss": the method's loss + λ ·
        "loss_recon", "loss_contrastive": the method's, "loss_recon", and the method's other 0-d values}. The
        decoder reconstructs the global views as the encoder received them; with `views_per_image=1` B of the 2B views
        (`one_view_rows`)."""
        out = self.method.ema_then_forward(views, momentum, labels, local_views, self.branch.taps)
        if len(out.maps) != len(self.branch.taps):
            raise ValueError(f"{type(self.method).__name__}.forward returned {len(out.maps)} maps for the branch's "
                             f"{len(self.branch.taps)} taps: pass its `taps` to the encoder (pooled, maps = "
                             "self.encoder(x, taps)) and the maps to `self.outputs`")
        rows = None
        if self.views_per_image == 1:  # every process has an equal share of the global batch
            rows = one_view_rows(2 * len(views), rank() * len(views), views.device)  # of out.stacked_views
        loss_recon = self.branch.loss(out.maps, out.stacked_views, rows)
        return {"loss": out.loss + self.recon_weight * loss_recon, **out.logged, "loss_contrastive": out.loss,
                "loss_recon": loss_recon}

