"""Config -> modules: the encoder, the method, and the RePre branch around it."""

from __future__ import annotations

import dataclasses
import logging

import torch

from repre.config import Config, checked
from repre.core import dist
from repre.errors import UserError
from repre.methods import build_method
from repre.models.backbone import Backbone, ModelBuildError, resolve_arch
from repre.reconstruction import Baseline, PretrainingModel, RePre

# the recon.* keys builder.py reads itself, not passed by name to ReconstructionBranch: `enabled` (whether there is
# a branch), `weight` and `views` (RePre's recon_weight and views_per_image) and `taps` (RePre's `taps=`, which it
# gives the branch); every other one is a `ReconstructionBranch` argument of the same name
RECON_WRAPPER_KEYS = ("enabled", "weight", "taps", "views")
log = logging.getLogger("repre")


def build_encoder(cfg: Config) -> Backbone:
    """The online encoder of a run; the image size must be a multiple of its patch size. `cfg` is checked as a
    YAML file would be."""
    return _encoder(checked(cfg, "build_encoder"))


def _encoder(cfg: Config) -> Backbone:
    """`build_encoder` of a checked config."""
    arch, kwargs = resolve_arch(cfg.model.arch, cfg.data.image_size, cfg.model.drop_path, cfg.model.kwargs)
    if cfg.data.local_crops:  # DINO's local crops: position embeddings interpolated to their size
        kwargs["dynamic_img_size"] = True
    try:
        encoder = Backbone(arch, kwargs, cfg.model.init, name=cfg.model.arch)
    except ModelBuildError as exc:  # said in the config's terms (not the timm name and kwargs it resolved to)
        given = f"model.arch={cfg.model.arch} at data.image_size={cfg.data.image_size}"
        if cfg.data.local_crops and "dynamic_img_size" in exc.reason:  # the keyword the local crops added
            raise UserError(f"cannot build {given} with data.local_crops={cfg.data.local_crops}: its crops of "
                            f"data.local_size={cfg.data.local_size} need a model that takes other input sizes "
                            f"(timm's dynamic_img_size), which this one does not ({exc.reason}); use a ViT that "
                            "does (timm's VisionTransformer, Eva), or --set data.local_crops=0") from None
        if not cfg.model.kwargs:
            raise UserError(f"cannot build {given}: {exc.reason}") from None
        written = "{" + ", ".join(f"{k}: {v}" for k, v in cfg.model.kwargs.items()) + "}"
        raise UserError(f"cannot build {given} with model.kwargs {written}: {exc.reason}; set model.kwargs to fit "
                        "it (e.g. --set model.kwargs.num_heads=N; a preset's stay when --set changes model.arch), "
                        "or drop them with --set 'model.kwargs={}'") from None
    size, p = cfg.data.image_size, encoder.patch_size
    if size % p:
        lower, upper = size - size % p, size - size % p + p
        raise UserError(
            f"data.image_size={size} is not divisible by the patch size {p} of {cfg.model.arch}; "
            f"use {lower or upper} or {upper}, or a model with another patch size"
        )
    if cfg.data.local_crops and cfg.data.local_size % p:
        raise UserError(f"data.local_size={cfg.data.local_size} is not divisible by the patch size {p}; "
                        f"use {max(p, cfg.data.local_size - cfg.data.local_size % p)}")
    return encoder


def check_builds(cfg: Config, device: torch.device) -> None:
    """Build the run's model shape-only, on the meta device (no memory, no weights' time), so that a setting it
    refuses (model.arch, model.kwargs, recon.taps, recon.out_stride, ...) is said before the data are indexed,
    which takes minutes on a large folder (the class count is a stand-in: the data's is checked with them)."""
    with torch.device("meta"):
        model = build_model(cfg, num_classes=2)
    if cfg.train.deterministic and device.type == "cuda":
        check_deterministic_cuda(cfg, model)
    if dist.is_main():
        _warn_of_shrunk_windows(cfg, model.method.encoder)


def _warn_of_shrunk_windows(cfg: Config, encoder: Backbone) -> None:
    """A Swin at an image size where a stage's grid is smaller than its window: timm shrinks that window to the
    grid, which the run trains with; `repre eval` refuses the sizes that would give other windows."""
    if not encoder.hierarchical:
        return
    size, asked = cfg.data.image_size, encoder.windows_at()
    if (short := encoder.least_size_for(asked, (size, size))) is not None:
        log.warning("data.image_size=%d: a stage of %s has fewer cells than its window (grids %s, windows %s), so "
                    "timm shrinks its window to %s; the run trains so, and is evaluated at sizes that keep those "
                    "windows. data.image_size=%d or more keeps the windows asked for", size, cfg.model.arch,
                    short[1], asked, encoder.windows(), short[0])


def check_deterministic_cuda(cfg: Config, model: PretrainingModel) -> None:
    """With train.deterministic on a GPU, refuse what PyTorch has no deterministic CUDA backward for: a decoder
    that interpolates (`ReconstructionBranch.resamples`) other than nearest, and DINO's local crops."""
    resamples = isinstance(model, RePre) and model.branch.resamples(cfg.data.image_size)
    if resamples and cfg.recon.upsample != "nearest":
        raise UserError(f"train.deterministic=true on a GPU needs recon.upsample=nearest: PyTorch has no "
                        f"deterministic CUDA backward for {cfg.recon.upsample} upsampling")
    if cfg.data.local_crops > 0:
        raise UserError("train.deterministic=true on a GPU needs data.local_crops=0: the local crops resample the "
                        "position embeddings bicubically, which has no deterministic CUDA backward in PyTorch")


def build_model(cfg: Config, num_classes: int | None = None) -> PretrainingModel:
    """The trainable model of a run: `RePre(method)` or, with recon.enabled=false, `Baseline(method)`.

    `num_classes`: classes of the training data, needed by method.name=supervised only. `cfg` is checked as a
    YAML file would be (its values changed in Python included).
    """
    cfg = checked(cfg, "build_model")
    encoder = _encoder(cfg)
    if cfg.model.grad_checkpointing:
        encoder.set_grad_checkpointing(True)
    method = build_method(cfg, encoder, num_classes)
    if not cfg.recon.enabled:
        return Baseline(method)
    r = cfg.recon
    branch = {k: v for k, v in dataclasses.asdict(r).items() if k not in RECON_WRAPPER_KEYS}  # width, norm_pix, ...
    try:
        return RePre(method, taps=r.taps, recon_weight=r.weight, views_per_image=r.views, **branch)
    except ValueError as exc:  # the branch's refusal of an encoder (Python's words), in the config's
        raise UserError(f"the reconstruction branch (recon.enabled=true) cannot serve model.arch={cfg.model.arch} "
                        f"with model.kwargs {cfg.model.kwargs or {}}: {exc}") from None
