"""The reconstruction branch seen from outside: recon.png during pre-training, `repre eval recon` (PSNR, L1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from repre.config import Config
from repre.core.pictures import Column, save_png, sheet, thumb_side, tile
from repre.core.runtime import Runtime
from repre.data.evaluation import eval_loader
from repre.data.pipeline import ViewCollate, ViewDataset, clean_targets, view_spec
from repre.data.sources import ImageSource
from repre.data.views import denormalize
from repre.errors import UserError
from repre.losses import patch_stats
from repre.methods.base import stack_views
from repre.reconstruction import RePre


def to_pixel_space(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool, patch: int,
                   floor: float = 1e-6) -> torch.Tensor:
    """A prediction in the loss's space -> normalized pixel space (norm_pix: undo per-patch normalization
    with the target's patch statistics, as MAE's pictures do)."""
    if not norm_pix:
        return pred
    mean, std = patch_stats(target.float(), patch, floor)
    return pred.float() * std + mean


def save_grid(rows: list[torch.Tensor], path: Path) -> None:
    """Rows of [N, 3, H, W] images in [0, 1] -> one PNG, upscaled (nearest) so small images stay visible."""
    side = thumb_side(rows[0].shape[-1])
    save_png(sheet([Column([tile(row[i].cpu(), side) for row in rows]) for i in range(len(rows[0]))]), path)


def reconstruct(model: nn.Module, x: torch.Tensor, rt: Runtime, target: torch.Tensor | None = None) -> torch.Tensor:
    """Normalized images x [N, 3, H, W] -> the decoder's reconstructions, in normalized pixel space (norm_pix:
    with the statistics of `target`, the images reconstructed; default x)."""
    encoder = model.method.encoder
    with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp):
        _, maps = encoder(x, model.method.taps)
        pred = model.reconstruct(maps, x.shape[-2:])
    target = x if target is None else target
    branch = model.branch
    return to_pixel_space(pred.float(), target, branch.norm_pix, branch.patch_size, branch.norm_pix_floor)


@torch.no_grad()
def save_recon_grid(model: nn.Module, cfg: Config, source: ImageSource, path: Path, rt: Runtime) -> None:
    """Both views of the first `eval.recon.images` images (epoch-0 augmentation) above their reconstructions;
    with recon.target=clean, the clean targets between them."""
    spec = view_spec(cfg, source)
    n = min(cfg.eval.recon.images, len(source))
    dataset = ViewDataset(source, spec, cfg.train.seed)
    clean = cfg.recon.target == "clean"
    batch = ViewCollate(spec, clean=clean)([dataset[(0, i)] for i in range(n)])
    x = stack_views(batch["views"]).to(rt.device)
    target = stack_views(clean_targets(batch["clean"], spec)).to(rt.device) if clean else x
    was_training = model.training
    model.eval()
    pred = reconstruct(model, x, rt, target)
    model.train(was_training)
    rows = [x, target, pred] if clean else [x, pred]
    save_grid([denormalize(r.float(), spec.mean, spec.std) for r in rows], path)


@torch.no_grad()
def recon_eval(model: nn.Module, cfg: Config, rt: Runtime, out: Path | None) -> dict[str, Any]:
    """PSNR (dB) and L1 of the reconstructions of held-out images (test split, no augmentation), in [0, 1]
    pixel space; `out/recon.png`: inputs, reconstructions and error maps (|error| x 4, clipped). With
    recon.norm_pix the reconstructions take each patch's mean and std from the image itself (as MAE's
    pictures do), so `extra["psnr_patch_means_db"]` gives what those statistics alone score: the image of its
    patch means, the reconstruction of a decoder that outputs zeros."""
    if not isinstance(model, RePre):
        raise UserError("this checkpoint has no decoder (pre-trained with recon.enabled=false): nothing to evaluate")
    loader = eval_loader(cfg, "test", cfg.eval.recon.subset)
    mean, std = loader.dataset.mean, loader.dataset.std
    branch = model.branch
    model.eval()
    psnr, l1, floor, shown = [], [], [], None
    for x, _ in loader:
        if not len(x):
            continue
        x = x.to(rt.device)
        a, b = denormalize(x.float(), mean, std), denormalize(reconstruct(model, x, rt), mean, std)
        psnr.append(batch_psnr(a, b))
        l1.append((a - b).abs().mean(dim=(1, 2, 3)).cpu())
        if branch.norm_pix:
            means = to_pixel_space(torch.zeros_like(x, dtype=torch.float32), x, True, branch.patch_size,
                                   branch.norm_pix_floor)
            floor.append(batch_psnr(a, denormalize(means, mean, std)))
        if shown is None:
            k = min(cfg.eval.recon.images, len(x))
            err = ((a[:k] - b[:k]).abs().mean(dim=1, keepdim=True) * 4).clamp(0, 1).expand(-1, 3, -1, -1)
            shown = [a[:k], b[:k], err]
    if not psnr:
        raise UserError("no image of the evaluation could be read (each is named in a warning above)")
    extra: dict[str, Any] = {"l1": float(torch.cat(l1).mean()), "images": int(sum(len(p) for p in psnr))}
    if floor:
        extra["psnr_patch_means_db"] = float(torch.cat(floor).mean())
    if out is not None:
        save_grid(shown, out / "recon.png")
        extra["picture"] = str(out / "recon.png")
    return {"task": "recon", "metric": "psnr_db", "value": float(torch.cat(psnr).mean()), "extra": extra}


def batch_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Images a, b [N, C, H, W] in [0, 1] -> the PSNR (dB) of each pair [N], on the CPU."""
    mse = (a - b).square().mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).cpu()
