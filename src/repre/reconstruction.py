"""The RePre branch, composed around any method.

`RePre(method, decoder, ...)` asks the method for its online encoder's tap maps (from the forward the
contrastive loss already runs), decodes them to pixels and adds lambda * reconstruction loss:

    out = method(views, momentum)            # "loss" = contrastive; "recon_maps", "recon_targets"
    pred = decoder(out["recon_maps"])        # [N, 3, H, W]
    loss = contrastive + weight * L(pred, out["recon_targets"])  # or L(pred, clean targets): recon.target

With the branch disabled no decoder exists and the plain method is trained: the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from repre.errors import UserError
from repre.losses import reconstruction_loss
from repre.methods.base import Method, stack_views
from repre.models.decoder import Decoder


class Baseline(nn.Module):
    """The method alone: the baseline every RePre result is compared with. forward(views, momentum) -> dict of
    named losses, "loss_recon" 0."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    @property
    def encoder(self):
        return self.method.encoder

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The method's weight-decay rule over every parameter of this module (a decoder included)."""
        return self.method.param_groups(weight_decay, module=self)

    def forward(
        self, views: torch.Tensor, momentum: float, labels: torch.Tensor | None = None,
        local_views: torch.Tensor | None = None, targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """views [B, V, 3, H, W] (local_views [B, L, 3, h, w]) -> the method's losses; `targets` is unused."""
        out = self.method(views, momentum, labels, local_views)
        out["loss_contrastive"] = out["loss"]
        out["loss_recon"] = torch.zeros((), device=out["loss"].device)
        return out


class RePre(Baseline):
    """A method plus the reconstruction branch. forward(views, momentum) -> dict of named losses."""

    def __init__(
        self,
        method: Method,
        *,
        taps: Sequence[int],
        width: int = 128,
        min_width: int = 8,
        weight: float = 1.0,
        loss: str = "l1",
        norm_pix: bool = False,
        norm_pix_floor: float = 1e-6,
        depth: int = 1,
        upsample: str = "bilinear",
        out_stride: int = 1,
    ) -> None:
        super().__init__(method)
        enc = method.encoder
        self.method.taps = list(taps)
        channels, strides = [enc.unit_channels[t] for t in taps], [enc.unit_strides[t] for t in taps]
        if out_stride > min(strides):
            raise UserError(f"recon.out_stride={out_stride} is coarser than the encoder's finest tapped map "
                            f"(stride {min(strides)}): use at most {min(strides)}")
        self.decoder = Decoder(channels, min(strides), width, min_width, depth=depth, upsample=upsample,
                               out_stride=out_stride)
        self.weight, self.loss_kind = weight, loss  # the trainer sets a scheduled weight
        self.norm_pix, self.norm_pix_floor = norm_pix, norm_pix_floor

    def reconstruct(self, maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Tap maps -> pixels [N, 3, H, W] in normalized pixel space."""
        return self.decoder(maps, size)

    def forward(
        self, views: torch.Tensor, momentum: float, labels: torch.Tensor | None = None,
        local_views: torch.Tensor | None = None, targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`targets` [B, 2, 3, H, W]: what the two global views reconstruct (recon.target=clean); None: the
        views themselves, as the encoder received them."""
        out = self.method(views, momentum, labels, local_views)
        targets = out.pop("recon_targets") if targets is None else stack_views(targets)
        pred = self.reconstruct(out.pop("recon_maps"), targets.shape[-2:])
        loss_recon = reconstruction_loss(
            pred, targets, self.loss_kind, self.norm_pix, self.method.encoder.patch_size, self.norm_pix_floor
        )
        out["loss_contrastive"] = out["loss"]
        out["loss_recon"] = loss_recon
        out["loss"] = out["loss"] + self.weight * loss_recon
        return out
