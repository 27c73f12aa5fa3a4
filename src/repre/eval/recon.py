"""Pictures of the reconstruction branch: views above their reconstructions."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.utils import make_grid, save_image

from repre.config import Config
from repre.data.loader import ImageSource, ViewCollate, ViewDataset, view_spec
from repre.data.views import denormalize
from repre.engine.runtime import Runtime
from repre.losses import patchify


def unpatchify(x: torch.Tensor, patch: int, size: tuple[int, int]) -> torch.Tensor:
    """[B, L, patch * patch * C] -> [B, C, H, W] (inverse of `repre.losses.patchify`)."""
    b, _, d = x.shape
    h, w = size[0] // patch, size[1] // patch
    c = d // (patch * patch)
    return x.reshape(b, h, w, patch, patch, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * patch, w * patch)


def to_pixel_space(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool, patch: int) -> torch.Tensor:
    """A prediction in the loss's space -> normalized pixel space (norm_pix: undo per-patch normalization
    with the target's patch statistics, as MAE's pictures do)."""
    if not norm_pix:
        return pred
    t = patchify(target.float(), patch)
    p = patchify(pred.float(), patch) * (t.var(dim=-1, keepdim=True) + 1e-6).sqrt() + t.mean(dim=-1, keepdim=True)
    return unpatchify(p, patch, target.shape[-2:])


@torch.no_grad()
def save_recon_grid(model: nn.Module, cfg: Config, source: ImageSource, path: Path, rt: Runtime) -> None:
    """Both views of the first `eval.recon_images` images (epoch-0 augmentation) above their reconstructions."""
    spec = view_spec(cfg, source)
    n = min(cfg.eval.recon_images, len(source))
    dataset = ViewDataset(source, spec, cfg.train.seed)
    batch = ViewCollate(spec)([dataset[(0, i)] for i in range(n)])
    x = batch["views"][:, :2].transpose(0, 1).reshape(2 * n, *batch["views"].shape[2:]).to(rt.device)
    was_training = model.training
    model.eval()
    encoder = model.method.encoder
    _, maps = encoder(x, model.method.taps)
    pred = to_pixel_space(model.reconstruct(maps, x.shape[-2:]).float(), x, model.norm_pix, encoder.patch_size)
    model.train(was_training)
    views, recon = denormalize(x.float(), spec.mean, spec.std), denormalize(pred, spec.mean, spec.std)
    grid = make_grid(torch.cat([views, recon]).cpu(), nrow=2 * n, padding=2, pad_value=1.0)
    scale = max(1, 96 // spec.size)
    if scale > 1:
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, str(path))
