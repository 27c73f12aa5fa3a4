"""The reconstruction branch seen from outside: recon.png during pre-training, `repre eval recon` (PSNR, L1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from repre.branch import ReconstructionBranch
from repre.config import Config
from repre.core import run_files
from repre.core.pictures import Column, Picture, save_picture, save_result_picture, sheet, thumb_side, tile
from repre.core.runtime import Runtime
from repre.data.evaluation import EvalDataset, eval_loader
from repre.data.pipeline import ViewCollate, ViewDataset, view_spec
from repre.data.sources import ImageSource
from repre.data.splits import spread_readable
from repre.data.views import Stats, denormalize
from repre.errors import UserError
from repre.eval.features import NONE_READ
from repre.losses import patch_stats
from repre.methods.base import stack_views
from repre.reconstruction import RePre

ERROR_GAIN = 2  # the error maps of `repre eval recon`: |error| in [0, 1] pixels, times this, clipped at 1


def to_pixel_space(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool, patch: int) -> torch.Tensor:
    """A prediction [B, 3, H, W] in the loss's space -> normalized pixel space [B, 3, H, W] (norm_pix: undo
    the per-patch normalization with the statistics of the target's [B, 3, H, W] `patch` x `patch` patches, as
    MAE's pictures do)."""
    if not norm_pix:
        return pred
    mean, std = patch_stats(target.float(), patch)
    return pred.float() * std + mean


def tiles(images: torch.Tensor) -> list[Image.Image]:
    """[N, 3, H, W] in [0, 1] -> tiles upscaled (nearest) so that small images stay visible."""
    side = thumb_side(images.shape[-1])
    return [tile(image.cpu(), side) for image in images]


def scored(images: torch.Tensor, truth: torch.Tensor, title: str, group: str = "") -> Column:
    """A column of `images` captioned with each one's PSNR against `truth` (both [N, 3, H, W] in [0, 1])."""
    return Column(tiles(images), title, group, [f"{v:.1f} dB" for v in batch_psnr(truth, images).tolist()])


def patch_means(target: torch.Tensor, branch: ReconstructionBranch) -> torch.Tensor:
    """Normalized images [N, 3, H, W] -> each patch filled with its own mean: what a norm_pix reconstruction
    shows before the decoder adds anything (its prediction of zeros through the target's patch statistics)."""
    return to_pixel_space(torch.zeros_like(target, dtype=torch.float32), target, True, branch.patch_size)


def reconstruction_columns(target: torch.Tensor, pred: torch.Tensor, branch: ReconstructionBranch, mean: Stats,
                           std: Stats, title: str = "image", group: str = "") -> list[Column]:
    """Columns of what is reconstructed, then (norm_pix) its patch means, then the reconstruction, each
    captioned with its PSNR: with norm_pix the reconstruction takes each patch's mean and std from the
    target, so the patch means column is what the decoder adds to."""
    truth = denormalize(target.float(), mean, std)
    cols = [Column(tiles(truth), title, group)]
    if branch.norm_pix:
        cols.append(scored(denormalize(patch_means(target, branch), mean, std), truth, "patch means", group))
    cols.append(scored(denormalize(pred, mean, std), truth, "reconstruction", group))
    return cols


GRAY_NOTE = ("reconstruction: the decoder predicts the 3 channels each on its own; on gray images its colour fringes "
             "are where they disagree")


GRAY_TOLERANCE = 1e-3  # in [0, 1] pixels: the views' colour jitter leaves gray channels ~1e-7 apart


def gray_note(images: torch.Tensor) -> list[str]:
    """The note under a picture of reconstructions of images [N, 3, H, W] in [0, 1]: GRAY_NOTE where they
    are gray (their channels equal within GRAY_TOLERANCE)."""
    spread = images.amax(dim=1) - images.amin(dim=1)
    return [GRAY_NOTE] if bool((spread <= GRAY_TOLERANCE).all()) else []


def reconstruct(model: RePre, x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Normalized images x [N, 3, H, W] -> the decoder's reconstructions, in normalized pixel space (norm_pix:
    with the patch statistics of x)."""
    branch = model.branch
    height, width = x.shape[-2:]
    with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp):
        _, maps = branch.encode(x)
        pred = branch.reconstruct(maps, (height, width))
    return to_pixel_space(pred.float(), x, branch.norm_pix, branch.patch_size)


@torch.no_grad()
def recon_sheet(model: RePre, cfg: Config, source: ImageSource, rt: Runtime) -> Picture:
    """`eval.recon.images` training images of the run (`spread_readable`'s: a folder's spread over its classes,
    an unreadable one giving way to a readable one not shown yet; epoch-0 augmentation), a row each; for each
    of the two views (a group of columns) the view, its patch means (norm_pix) and the reconstruction,
    captioned with PSNRs."""
    spec = view_spec(cfg, source)
    picks = list(spread_readable(source, cfg.eval.recon.images))
    n = len(picks)
    dataset = ViewDataset(source, spec, cfg.train.seed)
    batch = ViewCollate(spec)([dataset[(0, i)] for i in picks])
    x = stack_views(batch["views"]).to(rt.device)  # [2n, 3, S, S]: the first views, then the second
    was_training = model.training
    model.eval()
    pred = reconstruct(model, x, rt)
    model.train(was_training)
    cols: list[Column] = []
    for v, rows in enumerate((slice(0, n), slice(n, 2 * n))):
        cols += reconstruction_columns(x[rows], pred[rows], model.branch, spec.mean, spec.std, "input",
                                       f"view {v + 1}")
    return sheet(cols, notes=gray_note(denormalize(x, spec.mean, spec.std)))


def save_recon_grid(model: RePre, cfg: Config, source: ImageSource, path: Path, rt: Runtime) -> Picture:
    """`recon_sheet` written to `path`; returns it."""
    picture = recon_sheet(model, cfg, source, rt)
    save_picture(picture, path)
    return picture


@torch.no_grad()
def recon_eval(model: nn.Module, cfg: Config, rt: Runtime, out: Path | None) -> dict[str, Any]:
    """PSNR (dB) and L1 of the reconstructions of held-out images (test split, no augmentation), in [0, 1]
    pixel space; `out/recon.png`: images, their patch means (norm_pix), reconstructions (each with its PSNR)
    and error maps (|error| x ERROR_GAIN, clipped). With recon.norm_pix the reconstructions take each patch's
    mean and std from the image itself (as MAE's pictures do), so `extra["psnr_patch_means_db"]` gives what
    those statistics alone score: the image of its patch means, the reconstruction of a decoder that outputs
    zeros."""
    if not isinstance(model, RePre):
        raise UserError("this checkpoint has no decoder (pre-trained with recon.enabled=false): nothing to evaluate")
    loader = eval_loader(cfg, "test", cfg.eval.recon.subset)
    mean, std = loader.dataset.mean, loader.dataset.std
    branch = model.branch
    model.eval()
    psnr, l1, floor = [], [], []
    for x, _ in loader:
        if not len(x):
            continue
        x = x.to(rt.device)
        pred = reconstruct(model, x, rt)
        a, b = denormalize(x.float(), mean, std), denormalize(pred, mean, std)
        psnr.append(batch_psnr(a, b))
        l1.append((a - b).abs().mean(dim=(1, 2, 3)).cpu())
        if branch.norm_pix:
            floor.append(batch_psnr(a, denormalize(patch_means(x, branch), mean, std)))
    if not psnr:
        raise UserError(NONE_READ)
    extra: dict[str, Any] = {"l1": float(torch.cat(l1).mean()), "images": int(sum(len(p) for p in psnr))}
    if floor:
        extra["psnr_patch_means_db"] = float(torch.cat(floor).mean())
    if out is not None:
        x = spread_images(loader.dataset, cfg.eval.recon.images).to(rt.device)
        save_result_picture(error_sheet(model, x, rt, mean, std), out / run_files.RECON_PNG, extra)
    return {"task": "recon", "metric": "psnr_db", "value": float(torch.cat(psnr).mean()), "extra": extra}


def spread_images(dataset: EvalDataset, count: int) -> torch.Tensor:
    """`count` of the dataset's images (`spread_readable`'s: a class-sorted folder's each class in proportion,
    not its first class alone), prepared [k, 3, S, S]."""
    return dataset.stack([dataset.prepare(img) for img, _ in spread_readable(dataset.source, count).values()])


def error_sheet(model: RePre, x: torch.Tensor, rt: Runtime, mean: Stats, std: Stats) -> Picture:
    """Normalized images x [k, 3, S, S], a row each: the image, its patch means (norm_pix), the reconstruction
    (each with its PSNR) and the error map (|error| x ERROR_GAIN, clipped)."""
    pred = reconstruct(model, x, rt)
    a, b = denormalize(x.float(), mean, std), denormalize(pred, mean, std)
    shown = reconstruction_columns(x, pred, model.branch, mean, std)
    err = (a - b).abs().mean(dim=1, keepdim=True).mul(ERROR_GAIN).clamp(0, 1).expand(-1, 3, -1, -1)
    return sheet([*shown, Column(tiles(err), f"|error| x {ERROR_GAIN}")], notes=gray_note(a))


def batch_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Images a, b [N, C, H, W] in [0, 1] -> the PSNR (dB) of each pair [N], on the CPU."""
    mse = (a - b).square().mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).cpu()
