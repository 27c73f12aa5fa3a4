"""Projection and prediction heads."""

from __future__ import annotations

import torch
from torch import nn


def mlp(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo v3's MLP (its ViT's projector and predictor): hidden layers Linear(no bias) + BN + ReLU; output
    Linear(no bias) + BN without affine.

    [B, in_dim] -> [B, out_dim]. Batch norm makes the statistics per call: call it once per view.
    """
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if i == num_layers - 1 else hidden_dim
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        else:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO's projection head: [B, in_dim] -> [B, out_dim] logits.

    A 3-layer MLP (Linear + GELU, hidden `hidden_dim`, to `bottleneck_dim`), L2 normalization, then a
    weight-normalized Linear without bias to K = `out_dim` prototypes; with `norm_last_layer` its scale g
    is fixed to 1 (the official default, which stabilises training).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp:  # DINO's init (vision_transformer.py, DINOHead._init_weights)
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        scale = self.last_layer.parametrizations.weight.original0  # g: [out_dim, 1]
        scale.data.fill_(1.0)
        scale.requires_grad = not norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_dim] -> [B, out_dim] logits: the MLP's bottleneck L2-normalized, then the last layer."""
        x = nn.functional.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


def bn_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear + BN + ReLU, then Linear: BYOL's projector and predictor, which MoBY takes as they are.
    [B, in_dim] -> [B, out_dim]."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))
