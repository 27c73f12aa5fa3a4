"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers").

Online: backbone -> projector (3-layer MLP) -> predictor (2-layer MLP). Momentum: backbone -> projector,
an EMA of the online ones, updated before the key forward of the same step. Symmetric loss
ctr(q1, k2) + ctr(q2, k1), each CE(q . k^T / tau) * 2 tau with keys gathered over all processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from repre.core.dist import gather, rank
from repre.losses import mocov3_loss
from repre.methods.base import Method, MethodOutput, momentum_copy, per_view, stack_views
from repre.models.backbone import Backbone
from repre.models.heads import mlp


class MoCoV3(Method):
    """MoCo v3 on `encoder` (a `Backbone`, or a timm ViT or Swin, wrapped): the projector and predictor MLPs,
    the momentum encoder and projector, the symmetric contrastive loss at `temperature`. The keyword arguments
    are `method.mocov3.*` (config/schema.py: each key's reference); forward [B, 2, 3, H, W] -> `MethodOutput`."""

    def __init__(
        self,
        encoder: Backbone | nn.Module,
        *,
        proj_dim: int = 256,
        mlp_dim: int = 4096,
        temperature: float = 0.2,
        freeze_patch_embed: bool = False,
    ) -> None:
        super().__init__()
        encoder = Backbone.from_model(encoder)  # a bare timm ViT or Swin: wrapped
        if freeze_patch_embed:
            encoder.freeze_patch_embed()
        self.encoder = encoder
        self.projector = mlp(3, encoder.embed_dim, mlp_dim, proj_dim)
        self.predictor = mlp(2, proj_dim, mlp_dim, proj_dim)  # the ViT predictor ends with BN, as official
        self.momentum_encoder = momentum_copy(encoder)
        self.momentum_projector = momentum_copy(self.projector)
        self.temperature = temperature

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.momentum_encoder), (self.projector, self.momentum_projector)]

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor | None = None, local_views: None = None,
        taps: Sequence[int] = (),
    ) -> MethodOutput:
        """views: [B, 2, 3, H, W] -> the loss, "embedding_std", and the `taps`' maps of [x1; x2]."""
        b = views.shape[0]
        x = stack_views(views)
        pooled, maps = self.encoder(x, taps)
        q1, q2 = per_view(pooled, self.projector, self.predictor)
        with torch.no_grad():  # the targets, updated before this forward (`Method.ema_then_forward`)
            k1, k2 = per_view(self.momentum_encoder(x)[0], self.momentum_projector)
        offset = rank() * b
        loss = mocov3_loss(q1, gather(k2), self.temperature, offset) + mocov3_loss(
            q2, gather(k1), self.temperature, offset
        )
        return self.outputs(loss, pooled, maps, x)
