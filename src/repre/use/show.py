"""Pictures of what an encoder learned, image by image (`repre show`):

- the last block's (or `block`'s) class-token attention of each head over the patches (ViTs; DINO's figures),
  each map scaled to its own range to show its shape, and captioned with its largest weight over a flat map's
  (1x: uniform);
- the first three principal components of that block's patch features as RGB (DINOv2's figures), fitted
  on the patches of all the images shown, for each checkpoint on its own (two encoders' colours are not
  comparable, their arrangement is);
- for a checkpoint with the RePre decoder, its reconstruction of the image, with its PSNR; with norm_pix also
  the image's patch means, which the reconstruction takes from the image (and their PSNR).

Given a second checkpoint (`compare`, e.g. the baseline of a RePre run), its panels sit beside the first's on the
same images: the picture of what the branch changes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from repre.config import Config, override_items, reads
from repre.core.pictures import Column, picture_path, save_picture, sheet, tile
from repre.core.run_files import run_dir, short_names
from repre.core.runtime import Runtime, setup_runtime
from repre.data.evaluation import centre_view
from repre.data.folder import UnreadableImage
from repre.data.labels import class_name, class_names
from repre.data.sources import ImageSource, pretraining_stats
from repre.data.splits import spread_readable
from repre.data.views import denormalize, normalize
from repre.errors import UserError
from repre.eval.recon import batch_psnr, gray_note, patch_means, reconstruct
from repre.models.backbone import Backbone
from repre.pretrained import load_checkpoint_config, model_from, refuse_unread
from repre.reconstruction import RePre
from repre.use.embed import drop_run_subset, embed_source

log = logging.getLogger("repre")
TILE = 96  # pixels per panel
ATTENTION_FLOATS = 1 << 28  # the most attention weights `cls_attention` has a block hold at once (1 GiB)
MAX_IMAGES = 64  # rows of a picture
# how to read the panels: a note under the picture for each it has
ATTENTION_NOTE = ("attention: {block}'s class-token weights over the patches, each map scaled to its own range "
                  "(bright: more weight); max Nx flat: its largest weight over a uniform map's (1x: no patch "
                  "preferred); on the image: the heads' mean map in red over the image in grey")
PCA_NOTE = ("patch PCA: the first 3 principal components of {block}'s patch features as RGB: patches of one "
            "colour, features alike (the colours themselves mean nothing)")


@torch.no_grad()
def cls_attention(encoder: Backbone, x: torch.Tensor, block: int = -1) -> torch.Tensor:
    """Normalized images x [B, 3, H, W] -> `block`'s attention (default the last's) of the class token to each
    patch, per head: [B, heads, h, w] (softmax over all tokens, so a head's map sums to at most 1). The weights
    are the block's own, as its unfused path computes them (what its `attn_drop` sees: rotary position
    embeddings and query/key norms included); an attention whose weights are not a softmax over the class
    token, the other prefix tokens and the patches (CaiT's patch blocks, talking heads) raises UserError."""
    model: Any = encoder.model  # a timm ViT of any family (VisionTransformer, Eva, Beit...): its parts read by name
    if not encoder.has_class_token:
        raise UserError(f"{encoder.name} has no class token: attention maps need a ViT with one")
    attn, seen = model.blocks[block].attn, []
    h, w = model.patch_embed.grid_size
    tokens = model.num_prefix_tokens + h * w
    unreadable = UserError(f"{encoder.name}'s attention ({type(attn).__name__}) is no softmax over its class token "
                           "and patches that repre can read: no attention maps")
    if not isinstance(getattr(attn, "attn_drop", None), nn.Module):
        raise unreadable
    fused = getattr(attn, "fused_attn", None)
    # the weights before dropout (a module in training mode), the class token's row alone kept: [B, heads, N]
    handle = attn.attn_drop.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0][:, :, 0].float() if args[0].ndim == 4 else None))
    # the unfused path holds B * heads * N^2 weights of the block at once: images a few at a time
    heads = getattr(attn, "num_heads", 1)
    chunk = max(1, ATTENTION_FLOATS // (heads * tokens * tokens))
    try:
        if fused is not None:
            attn.fused_attn = False  # the path that computes the weights
        for part in x.split(chunk):
            model.forward_features(part)
    finally:
        handle.remove()
        if fused is not None:
            attn.fused_attn = fused
    read = [r for r in seen if r is not None]  # None: a call whose weights were not [B, heads, N, N]
    rows = torch.cat(read) if read and len(read) == len(seen) else None  # [B, heads, N]
    if (rows is None or len(rows) != len(x) or rows.shape[-1] != tokens
            or not torch.allclose(rows.sum(-1), torch.ones(()), atol=1e-3)):
        raise unreadable
    return rows[:, :, model.num_prefix_tokens:].reshape(len(x), rows.shape[1], h, w)


@torch.no_grad()
def patch_pca(encoder: Backbone, x: torch.Tensor, unit: int = -1) -> torch.Tensor:
    """Normalized images x [B, 3, H, W] -> the first 3 principal components of `unit`'s patch features (default
    the last unit's; final norm applied), fitted over all B * h * w patches, each scaled to [0, 1]: [B, 3, h, w]."""
    feats = encoder.unit_maps(x, [unit % encoder.num_units])[0].float()  # [B, D, h, w]
    b, d, h, w = feats.shape
    flat = feats.permute(0, 2, 3, 1).reshape(-1, d)
    flat = flat - flat.mean(dim=0)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    axes = v[:3].T  # [D, 3]
    axes = axes * torch.sign(axes[axes.abs().argmax(dim=0), torch.arange(axes.shape[1])])  # a fixed sign
    proj = flat @ axes
    proj = (proj - proj.min(dim=0).values) / (proj.max(dim=0).values - proj.min(dim=0).values).clamp_min(1e-8)
    if proj.shape[1] < 3:  # fewer patches or channels than 3 components
        proj = F.pad(proj, (0, 3 - proj.shape[1]))
    return proj.reshape(b, h, w, 3).permute(0, 3, 1, 2)


@dataclass
class Panels:
    """One checkpoint's pictures of the same images, each [B, 3 or 1, h, w] in [0, 1]."""

    name: str
    step: int
    images: torch.Tensor  # [B, 3, S, S] in [0, 1]: the images as this checkpoint's evaluation sees them
    pca: torch.Tensor
    attention: torch.Tensor | None  # [B, heads + 1, h, w]: the heads' maps, then their mean, each scaled to [0, 1]
    peak: torch.Tensor | None  # [B, heads + 1]: each map's (heads, then their mean) largest weight over uniform's
    recon: torch.Tensor | None
    recon_psnr: list[float] | None  # dB, against the image
    means: torch.Tensor | None  # norm_pix: the patch means the reconstruction starts from
    means_psnr: list[float] | None
    unit: str = "block"  # what --block counts in this encoder: "block", or a Swin's "stage"


def scaled_attention(attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, heads, h, w] attention weights -> (each map and the heads' mean, scaled to [0, 1] to show its shape:
    [B, heads + 1, h, w]; each one's largest weight over a uniform map's, 1 for a flat map: [B, heads + 1])."""
    maps = torch.cat([attention, attention.mean(dim=1, keepdim=True)], dim=1)
    peak = maps.amax(dim=(2, 3)) / maps.mean(dim=(2, 3)).clamp_min(1e-12)
    lo, hi = maps.amin(dim=(2, 3), keepdim=True), maps.amax(dim=(2, 3), keepdim=True)
    return (maps - lo) / (hi - lo).clamp_min(1e-8), peak


def panels(checkpoint: str | Path, loaded: tuple[dict, Config], images: list[torch.Tensor], rt: Runtime,
           block: int = -1) -> Panels:
    """uint8 images [3, H, W] -> the pictures of `checkpoint`'s evaluated encoder at `block` (a Swin: a stage;
    default the last) (and its decoder's reconstruction when it has one), each image prepared as this
    checkpoint's evaluation prepares it (its own input size, `centre_view`, and stats). `loaded`: the
    checkpoint, read, and its config (`load_checkpoint_config`)."""
    ckpt, cfg = loaded
    model = model_from(ckpt, cfg, checkpoint).eval().to(rt.device)
    encoder = model.method.eval_encoder
    if not -encoder.num_units <= block < encoder.num_units:
        n = encoder.num_units
        raise UserError(f"--block {block}: {run_dir(checkpoint).name}'s encoder has {n} "
                        f"{'stages' if encoder.hierarchical else 'blocks'}, so from 0 to {n - 1} (or from -{n} to -1, "
                        "counted from the last)")
    mean, std = pretraining_stats(cfg.data)
    seen = torch.stack([centre_view(img, cfg.data.image_size) for img in images]).float() / 255
    x = normalize(seen, mean, std).to(rt.device)
    attention: torch.Tensor | None
    peak: torch.Tensor | None
    try:
        attention, peak = scaled_attention(cls_attention(encoder, x, block))
    except UserError as exc:
        attention = peak = None  # a Swin: no class token
        if not encoder.hierarchical:
            log.info("%s", exc)
    recon = recon_psnr = means = means_psnr = None
    if isinstance(model, RePre):
        truth = seen.to(rt.device)
        recon = denormalize(reconstruct(model, x, rt), mean, std)
        recon_psnr = batch_psnr(truth, recon).tolist()
        if model.branch.norm_pix:
            means = denormalize(patch_means(x, model.branch), mean, std)
            means_psnr = batch_psnr(truth, means).tolist()
    def host(t: torch.Tensor | None) -> torch.Tensor | None:  # drawn beside `seen`, on the CPU
        return None if t is None else t.cpu()

    return Panels(run_dir(checkpoint).name, int(ckpt.get("step", 0)), seen, patch_pca(encoder, x, block).cpu(),
                  host(attention), host(peak), host(recon), recon_psnr, host(means), means_psnr,
                  "stage" if encoder.hierarchical else "block")


def shown_source(cfg: Config) -> ImageSource:
    """The images show draws from, those of `repre embed --split test`: the data's test split (whatever the
    run's eval.split); a folder, shards or your own code without a held-out split (unlabelled images), embed's
    training images."""
    try:
        return embed_source(cfg, "test", "show")
    except UserError:
        if cfg.data.name not in ("folder", "shards", "python") or cfg.data.streamed:
            raise
        return embed_source(cfg, "train", "show")


Shown = tuple[list[int], list[torch.Tensor], list[int], list[str] | None]  # indices, uint8 [3, H, W] images,
# labels, the labels' names or None


def chosen_images(cfg: Config, indices: list[int]) -> Shown:
    """The images of `shown_source` at `indices` (e.g. those of `repre embed --split test`'s rows), as read; one
    that cannot be read exits 2."""
    source = shown_source(cfg)
    read = []
    for i in dict.fromkeys(indices):
        if not 0 <= i < len(source):
            raise UserError(f"--image-index {i}: the images shown are {len(source)}, so from 0 to {len(source) - 1}")
        try:
            read.append(source.load(i))
        except UnreadableImage as exc:
            raise UserError(f"--image-index {i} cannot be read ({exc})") from None
    return list(dict.fromkeys(indices)), [x for x, _ in read], [y for _, y in read], class_names(source)


def first_images(cfg: Config, n: int) -> Shown:
    """`n` images of `shown_source` (`repre.data.splits.spread_readable`'s), as read."""
    source = shown_source(cfg)
    shown = spread_readable(source, n)
    if not shown:
        raise UserError("none of the images to show could be read (each is named in a warning above)")
    return list(shown), [x for x, _ in shown.values()], [y for _, y in shown.values()], class_names(source)


def on_image(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, S, S] and maps [B, 1, h, w], both in [0, 1] -> the maps as a heat colour (black, red,
    orange) over the images in grey, the maps resized bilinear to the images: where the weight lies, also on a
    dark background."""
    weight = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
    heat = torch.cat([weight, 0.6 * weight.square(), torch.zeros_like(weight)], dim=1)
    return (0.5 * images.mean(dim=1, keepdim=True) + 0.7 * heat).clamp(0, 1)


def columns(images: torch.Tensor, names: list[str], runs: list[Panels]) -> list[Column]:
    """The picture's columns: the images (captioned with their class), then each run's panels (its name as
    their group when there are two): reconstructions and patch means with their PSNR, attention maps with
    their largest weight over a uniform map's."""
    def tiles(maps: torch.Tensor, smooth: bool) -> list[Image.Image]:  # [N, C, h, w] in [0, 1]
        return [tile(m, TILE, smooth) for m in maps]

    def db(values: list[float]) -> list[str]:
        return [f"{v:.1f} dB" for v in values]

    cols = [Column(tiles(images, True), "image", captions=names if any(names) else None)]
    for run in runs:
        group = run.name if len(runs) > 1 else ""
        if run.means is not None:
            assert run.means_psnr is not None  # measured with the means
            cols.append(Column(tiles(run.means, False), "patch means", group, db(run.means_psnr)))
        if run.recon is not None:
            assert run.recon_psnr is not None  # measured with the reconstruction
            cols.append(Column(tiles(run.recon, True), "reconstruction", group, db(run.recon_psnr)))
        cols.append(Column(tiles(run.pca, False), "patch PCA", group))
        if run.attention is not None:
            assert run.peak is not None  # measured with the maps
            heads = run.attention.shape[1] - 1
            for i, title in [(heads, "attention, mean"), *((h, f"head {h}") for h in range(heads))]:
                peaks = [f"max {v:.1f}x flat" for v in run.peak[:, i].tolist()]
                cols.append(Column(tiles(run.attention[:, i : i + 1], False), title, group, peaks))
                if i == heads:
                    cols.append(Column(tiles(on_image(run.images, run.attention[:, i : i + 1]), True),
                                       "mean, on the image", group))
    return cols


def notes(images: torch.Tensor, runs: list[Panels], block: int = -1) -> list[str]:
    """How to read the picture's panels, a line each for those it has."""
    unit = runs[0].unit if len({run.unit for run in runs}) == 1 else "block or stage"
    which = (f"the last {unit}" if block == -1 else f"{unit} {block}" if block >= 0
             else f"{unit} {block} (counted from the last, -1 the last)")
    said = [ATTENTION_NOTE.format(block=which)] if any(run.attention is not None for run in runs) else []
    said.append(PCA_NOTE.format(block=which))
    if any(run.recon is not None for run in runs):
        said += gray_note(images)
    return said


def panel_names(runs: list[Panels], checkpoint: str | Path, compare: str | Path) -> tuple[str, str]:
    """What heads two runs' panels: their folders' names; where those are the same (runs/repre/seed1 beside
    runs/base/seed1), the fewest trailing parts of their paths that tell them apart, as `repre compare` names
    runs; two checkpoints of one run: the name with each one's step; else "first" and "second"."""
    if runs[0].name != runs[1].name:
        return runs[0].name, runs[1].name
    paths = short_names([str(run_dir(checkpoint)), str(run_dir(compare))])  # one run: its whole path twice
    if paths[0] != paths[1]:
        return paths[0], paths[1]
    if runs[0].step != runs[1].step:
        return f"{runs[0].name}, step {runs[0].step}", f"{runs[1].name}, step {runs[1].step}"
    return "first", "second"


def show(checkpoint: str | Path, out: str | Path, *, compare: str | Path | None = None, images: int = 4,
         overrides: Sequence[str] | None = None, image_index: list[int] | None = None,
         block: int = -1) -> dict[str, Any]:
    """Draw the pictures of `checkpoint` (and of `compare` beside them) for `images` of its test images (those
    at `image_index` when given), the attention and patch features of `block` (a Swin: a stage; -1: the last),
    into `out` (.png, .svg or .pdf) -> {"out", "images", "indices", "labels", "classes", "checkpoints", "block",
    "columns", "values"}; "values": for each checkpoint, the numbers its captions print (`caption_values`)."""
    overrides = override_items(overrides)
    n = len(dict.fromkeys(image_index)) if image_index else images  # --image-index: --images is not read
    if n < 1:
        raise UserError(f"--images {images}: show at least one image")
    if n > MAX_IMAGES:
        raise UserError(f"{n} images: show draws at most {MAX_IMAGES}, a row each (a taller picture cannot be read); "
                        "draw others in another picture")
    path = picture_path(out)
    refuse_unread("repre show", overrides, reads.SHOW)
    loaded = load_checkpoint_config(checkpoint, overrides)  # read once: an ImageNet checkpoint is large
    drop_run_subset(loaded[1], overrides)  # images as embed reads them
    indices, read, labels, classes = (chosen_images(loaded[1], image_index) if image_index
                                      else first_images(loaded[1], images))
    rt = setup_runtime(loaded[1].train)
    runs = [panels(checkpoint, loaded, read, rt, block)]
    if compare is not None:
        runs.append(panels(compare, load_checkpoint_config(compare), read, rt, block))
        runs[0].name, runs[1].name = panel_names(runs, checkpoint, compare)
    names = [class_name(classes, y) or "" for y in labels]
    pixels = runs[0].images  # the image column: as the first checkpoint sees them
    cols = columns(pixels, names, runs)
    save_picture(sheet(cols, notes=notes(pixels, runs, block)), path)
    return {"command": "show", "out": str(out), "images": len(labels), "indices": indices,
            "labels": [y if y >= 0 else None for y in labels],
            "classes": [n or None for n in names],
            "checkpoints": [str(checkpoint)] + ([str(compare)] if compare is not None else []), "block": block,
            "columns": [f"{c.group}: {c.title}" if c.group else c.title for c in cols],
            "values": [caption_values(run) for run in runs]}


def caption_values(run: Panels) -> dict[str, Any]:
    """The numbers under one checkpoint's panels, per image (None where it has no such panel): the PSNR in dB of
    its reconstructions and of the patch means they start from, and each attention map's largest weight over a
    flat map's, [heads..., their mean] per image."""
    return {"step": run.step, "reconstruction_db": run.recon_psnr, "patch_means_db": run.means_psnr,
            "attention_peak": None if run.peak is None else run.peak.tolist()}
