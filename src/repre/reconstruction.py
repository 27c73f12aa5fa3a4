"""The RePre branch, composed around any method.

`RePre(method, taps=..., ...)` asks the method for its online encoder's tap maps (from the forward the
contrastive loss already runs) and hands them to its `repre.nn.ReconstructionBranch`, which decodes them to
pixels; the total adds lambda * reconstruction loss:

    out = method(views, momentum)            # "loss" = contrastive; "recon_maps", "recon_targets"
    recon = branch.loss(out["recon_maps"], out["recon_targets"])  # or the clean targets: recon.target
    loss = contrastive + weight * recon

`fraction` < 1 decodes a share of the global views only (`reconstructed_share`): the encoder still sees them
all, the decoder's cost falls in proportion.

With the branch disabled no decoder exists and the plain method is trained: the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from repre.methods.base import Method, stack_views
from repre.nn import ReconstructionBranch


def reconstructed_share(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """The rows of a [x1; x2] stack ([2B, ...]: both global views of B images) that the decoder reconstructs:
    the first n images' first view and the last n images' second view, n = round(fraction * B), at least 1.

    The batch is in random order, so these are a random share of the images, and at fraction 0.5 each image
    is reconstructed once, from either view (the two views are augmented differently). 1.0: all rows."""
    if fraction >= 1.0:
        return x
    b = x.shape[0] // 2
    n = max(1, round(fraction * b))
    return torch.cat([x[:n], x[2 * b - n:]])


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
    """A method plus the reconstruction branch (`repre.nn.ReconstructionBranch` on the method's online encoder).
    forward(views, momentum) -> dict of named losses."""

    def __init__(self, method: Method, *, taps: Sequence[int], weight: float = 1.0, fraction: float = 1.0,
                 **branch: Any) -> None:
        """`fraction`: the share of the global views reconstructed (`reconstructed_share`); `branch`: the
        `ReconstructionBranch` arguments (width, min_width, loss, norm_pix, ...)."""
        super().__init__(method)
        self.branch = ReconstructionBranch(method.encoder, taps, **branch)
        self.method.taps = self.branch.taps  # the method returns these blocks' maps from its own forward
        self.weight = weight  # the trainer sets a scheduled weight
        self.fraction = fraction

    @property
    def decoder(self) -> nn.Module:
        return self.branch.decoder

    def reconstruct(self, maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Tap maps -> pixels [N, 3, H, W] in the loss's space."""
        return self.branch.reconstruct(maps, size)

    def forward(
        self, views: torch.Tensor, momentum: float, labels: torch.Tensor | None = None,
        local_views: torch.Tensor | None = None, targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`targets` [B, 2, 3, H, W]: what the two global views reconstruct (recon.target=clean); None: the
        views themselves, as the encoder received them."""
        out = self.method(views, momentum, labels, local_views)
        targets = out.pop("recon_targets") if targets is None else stack_views(targets)
        maps = [reconstructed_share(m, self.fraction) for m in out.pop("recon_maps")]
        loss_recon = self.branch.loss(maps, reconstructed_share(targets, self.fraction))
        out["loss_contrastive"] = out["loss"]
        out["loss_recon"] = loss_recon
        out["loss"] = out["loss"] + self.weight * loss_recon
        return out

