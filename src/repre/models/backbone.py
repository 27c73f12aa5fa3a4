"""The encoder: a thin wrapper over a timm vision transformer, plain (ViT: `blocks`) or hierarchical (Swin:
`layers`, the stages).

One forward returns what both branches need: the pooled embedding for the contrastive heads and, when
asked, the feature maps of the tap units (ViT blocks, Swin stages) for the RePre decoder, from the same pass
(`forward_intermediates`, which honours timm's gradient checkpointing since timm 1.0.16). The wrapped
`model` is a plain timm model: its state dict has timm's key names, which is what export writes.
"""

from __future__ import annotations

import copy
import difflib
import math
import operator
from collections.abc import Sequence
from typing import Any, SupportsIndex, TypeGuard

import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from repre.errors import UserError
from repre.models.dino_vit import dino_init_, dino_resample
from repre.models.mocov3_vit import has_fixed_sincos, mocov3_init_, sincos_2d

# Small configurations for small images: (timm architecture, keyword arguments). Image size comes from data.
SMALL_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_femto_patch4": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=96, depth=6, num_heads=3)),
    "vit_pico_patch4": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=128, depth=6, num_heads=4)),
    "vit_tiny_patch4": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=192, depth=12, num_heads=3)),
    # Swin for 32 px (patch 2) or 64 px (patch 4): 3 stages at strides p, 2p, 4p, window 4 divides each
    "swin_pico_patch2_window4": ("swin_tiny_patch4_window7_224", dict(
        patch_size=2, window_size=4, embed_dim=48, depths=(2, 2, 2), num_heads=(2, 4, 8))),
    "swin_pico_patch4_window4": ("swin_tiny_patch4_window7_224", dict(
        patch_size=4, window_size=4, embed_dim=48, depths=(2, 2, 2), num_heads=(2, 4, 8))),
}


class ModelBuildError(UserError):
    """timm could not build a known architecture with the keyword arguments given (its model.kwargs among them):
    `reason` is timm's."""

    def __init__(self, message: str, reason: str = "") -> None:  # a default: unpickled from its message alone
        super().__init__(message)
        self.reason = reason


# model.init -> what it does to a freshly built timm model, in place (raises ValueError where it does not fit)
INITS = {"mocov3": mocov3_init_, "dino": dino_init_}
# regularisation of the pre-training run (timm's stochastic depth and dropouts), not of the weights' shapes
TRAINING_ONLY_KWARGS = ("drop_path_rate", "drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate",
                        "attn_drop_rate")


def map_side(side: int, patch: int, stride: int) -> int:
    """The cells along a side of `side` px of a map at `stride` (the patch times a power of two): the patch grid
    halved per x2, an odd side rounded up, as timm's Swin patch merging pads it (a ViT's: side // patch)."""
    return -(-(side // patch) // (stride // patch))


def resolve_arch(arch: str, image_size: int, drop_path: float, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A config's `model.arch` -> the timm name and the kwargs that rebuild it (`timm.create_model(name, **kw)`)."""
    name, kwargs = SMALL_CONFIGS.get(arch, (arch, {}))
    # always explicit: timm's Swin defaults to drop_path_rate 0.1, so model.drop_path=0 must say 0
    return name, {**kwargs, "img_size": image_size, "drop_path_rate": drop_path, **extra}


def create_timm(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    if not timm.is_model(arch.split(".")[0]):
        near = difflib.get_close_matches(arch, [*SMALL_CONFIGS, *timm.list_models()], n=5, cutoff=0.8)
        raise UserError(f"unknown model.arch {arch!r}: "
                        + (f"did you mean {', '.join(near)}? " if near else "")
                        + "a timm vision transformer (vit_small_patch16_224, swin_tiny_patch4_window7_224; "
                        "timm.list_models('vit_*') lists them) or one for small images (" + ", ".join(SMALL_CONFIGS)
                        + ")")
    try:
        return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except (TypeError, ValueError, AssertionError, IndexError) as exc:  # IndexError: per-stage lists of two lengths
        raise ModelBuildError(f"cannot build {arch} with {kwargs}: {exc}", str(exc)) from None


def supported_units(model: nn.Module, name: str) -> nn.Sequential | nn.ModuleList:
    """A timm model's blocks (ViT) or stages (Swin), the units a tap names; UserError for a model whose maps or
    embedding the branch and the evaluations cannot read (`name`: the architecture as errors call it)."""
    units = getattr(model, "blocks", None)
    units = units if units is not None else getattr(model, "layers", None)
    if units is not None and not len(units):
        raise UserError(f"{name} is built with no blocks or stages (depth 0 in model.kwargs): give it one or more")
    # a ViT's tap maps are its tokens on the patch grid, which its patch embedding names (not XCiT's)
    grid = hasattr(model, "layers") or hasattr(getattr(model, "patch_embed", None), "dynamic_feat_size")
    needs = ("forward_intermediates", "patch_embed")
    if units is None or not grid or not all(hasattr(model, a) for a in needs):
        raise UserError(
            f"{name} is not a timm vision transformer with forward_intermediates and blocks (ViT) or layers "
            "(Swin); use vit_*, deit_*, swin_* or a small config such as vit_pico_patch4"
        )
    if getattr(model, "neck", None) is not None:  # timm's samvit_*: NHWC blocks, no token output
        raise UserError(f"{name} is SAM's image encoder: its embedding is a convolutional neck's map and its "
                        "blocks' maps come in no token layout the decoder reads; use a plain ViT (vit_*) or a Swin")
    pool = getattr(model, "global_pool", None)
    if pool == "":
        raise UserError(f"{name} is built with global_pool='' (its tokens, not an embedding [B, D]): build it "
                        "with global_pool='token' or 'avg' (a ViT), 'avg' (a Swin)")
    if hasattr(model, "blocks") and pool in ("max", "avgmax"):  # the probes read a class token or the mean
        raise UserError(f"{name} is built with global_pool={pool!r}, which the evaluations do not read (a class "
                        "token or the patch tokens' mean): build it with global_pool='token' or 'avg'")
    return units


def token_side(model: nn.Module, name: str) -> int:
    """A token's side in pixels (a hybrid's CNN stem reduces before its patches); UserError for patches that are
    not square."""
    embed: Any = model.patch_embed  # timm's class for this architecture: PatchEmbed, a hybrid's HybridEmbed, ...
    patch = getattr(embed, "patch_size", None)
    if isinstance(patch, (tuple, list)) and len(set(patch)) > 1:  # timm's feat_ratio says the larger side
        raise UserError(f"{name} has {patch[0]}x{patch[1]} pixel patches: the tap maps and the decoder take "
                        "square ones; build it with patch_size=N")
    side = embed.feat_ratio() if hasattr(embed, "feat_ratio") else embed.patch_size  # (h, w), or an int (XCiT)
    return int(side if isinstance(side, int) else side[0])


class Backbone(nn.Module):
    """x: [B, 3, H, W] -> (pooled [B, D], maps: one [B, C_i, H/s_i, W/s_i] per requested tap i). A ViT's taps
    all have C_i = D and s_i = p, its patch size; a Swin's follow its stages (`unit_channels`, `unit_strides`)."""

    def __init__(self, arch: str, kwargs: dict[str, Any], init: str = "timm", model: nn.Module | None = None,
                 *, name: str | None = None) -> None:
        """`init`: "timm", "mocov3" (MoCo v3's ViT: `repre.models.mocov3_vit.mocov3_init_`) or "dino" (DINO's:
        `repre.models.dino_vit.dino_init_`). `model`: an existing timm model to wrap instead of building `arch`
        (`from_model`). `name`: the architecture as errors call it (a config's model.arch, vit_pico_patch4,
        which resolves to timm's `arch`)."""
        super().__init__()
        self.arch, self.kwargs, self.init = arch, dict(kwargs), init
        self.name = name = name or arch
        self.model = model if model is not None else create_timm(arch, kwargs)
        units = supported_units(self.model, name)
        self.hierarchical = not hasattr(self.model, "blocks")
        self.embed_dim: int = self._timm.num_features
        self.num_units: int = len(units)  # the units a tap names: blocks (ViT) or stages (Swin)
        self.patch_size: int = token_side(self.model, name)
        info = getattr(self.model, "feature_info", None) if self.hierarchical else None
        self.unit_channels = [int(f["num_chs"]) for f in info] if info else [self.embed_dim] * self.num_units
        self.unit_strides = [int(f["reduction"]) for f in info] if info else [self.patch_size] * self.num_units
        if init != "timm":
            try:
                INITS[init](self.model)
            except ValueError as exc:
                raise UserError(f"model.init={init} does not fit {name}: {exc}; use model.init=timm") from None

    @classmethod
    def from_model(cls, model: nn.Module) -> Backbone:
        """An existing timm ViT or Swin (its weights shared, not copied) behind this interface; a Backbone as it
        is."""
        if isinstance(model, Backbone):
            return model
        if not isinstance(model, nn.Module):
            raise TypeError(f"the encoder is a {type(model).__name__}: give a timm ViT or Swin (an nn.Module, e.g. "
                            "timm.create_model('vit_small_patch16_224', num_classes=0)) or a repre Backbone")
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        return cls(arch, {}, model=model)

    def forward(self, x: torch.Tensor, taps: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images x [B, 3, H, W] -> (the pooled embedding [B, D], the maps of the blocks (a Swin: stages) `taps`
        names: [B, C_i, H/s_i, W/s_i] each; none without taps).

        A ViT's maps are views of its tokens ([B, C, h, w] with channels-last strides), not copies: whoever
        reads them reads them in that layout (the decoder's laterals: a matmul over the channels, in bf16 under
        autocast), where timm's NCHW output would copy every view in fp32 first. A Swin's are timm's
        (contiguous: its NCHW output is the only one it offers)."""
        if isinstance(taps, (int, str)) or not isinstance(taps, Sequence):
            raise TypeError(f"taps={taps!r}: a list of block (a Swin: stage) indices, e.g. [2, 5]; a count of evenly "
                            "spaced taps is the branch's (ReconstructionBranch's taps=, recon.taps)")
        if not taps:
            return self._timm.forward_head(self._timm.forward_features(x), pre_logits=True), []
        units = [self._unit(t) for t in taps]
        indices = sorted(set(units))  # timm gives them in depth order
        if self.hierarchical:
            final, maps = self._timm.forward_intermediates(x, indices=indices, output_fmt="NCHW", norm=False)
        else:
            final, tokens = self._timm.forward_intermediates(x, indices=indices, output_fmt="NLC", norm=False)
            grid = self._timm.patch_embed.dynamic_feat_size(x.shape[-2:])
            maps = [t.unflatten(1, grid).permute(0, 3, 1, 2) for t in tokens]  # [B, L, C] -> [B, C, h, w]
        at = dict(zip(indices, maps, strict=True))
        return self._timm.forward_head(final, pre_logits=True), [at[u] for u in units]  # in the order asked

    def _unit(self, tap: int) -> int:
        """A tap (negative: from the end) as a 0-based block (a Swin: stage) index; out of range: ValueError."""
        tap = integer(tap, "a tap")
        if not -self.num_units <= tap < self.num_units:
            units = "stages" if self.hierarchical else "blocks"
            raise ValueError(f"tap {tap}: the encoder has {self.num_units} {units}, "
                             f"so from {-self.num_units} to {self.num_units - 1}")
        return tap % self.num_units

    def unit_maps(self, x: torch.Tensor, units: Sequence[int]) -> list[torch.Tensor]:
        """x [B, 3, H, W] -> the maps of `units` (0-based blocks, or a Swin's stages) as a frozen evaluation reads
        them: [B, C_i, H/s_i, W/s_i] each, contiguous; a ViT's blocks after its final norm, a Swin's stages as
        they are (its last one normed: timm's norm follows the last stage); a ViT that norms after pooling
        (`pooled_norm`) gives its norm to each token. The training forward's tap maps are taken without the
        norm."""
        maps = self._timm.forward_intermediates(x, indices=list(units), norm=True, output_fmt="NCHW",
                                                intermediates_only=True)
        if (fc_norm := self.pooled_norm) is not None:  # the final norm follows the mean: given to each token
            maps = [fc_norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous() for m in maps]
        return maps

    @property
    def _timm(self) -> Any:
        """`model`, to read the members its own timm class declares and nn.Module does not (forward_intermediates,
        patch_embed, pos_embed, a Swin's layers): timm's ViTs, Swins and their relatives (Eva, BEiT) share no class
        that declares them. `supported_units` checks at the build that the model has those the taps read."""
        return self.model

    @property
    def pooled_norm(self) -> nn.Module | None:
        """The final norm of a ViT that applies it after pooling (timm's `fc_norm`, as global_pool='avg' builds
        it, MAE's; its `norm` is then an identity, which `forward_intermediates(norm=True)` applies), or None.
        Frozen evaluations give it to what they read, so that every ViT's features come after its final norm."""
        fc_norm = getattr(self.model, "fc_norm", None)
        return None if self.hierarchical or fc_norm is None or isinstance(fc_norm, nn.Identity) else fc_norm

    @property
    def pools_patch_tokens(self) -> bool:
        """The embedding is pooled from the patch tokens, not a class token: their mean (a Swin's maps; a ViT built
        with global_pool='avg'), or any pooling of a ViT without a class token (SigLIP's attention pooling,
        global_pool='map')."""
        return self.hierarchical or not self.has_class_token or getattr(self.model, "global_pool", None) == "avg"

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self._timm.set_grad_checkpointing(enable)

    def freeze_patch_embed(self) -> None:
        """MoCo v3's stability trick: keep the random patch projection fixed (its weight and bias alone, as
        moco-v3's vits.py:43-51; a Swin's norm after it trains). A convolutional stem before it (a hybrid ViT)
        is refused: the official code freezes nothing there."""
        embed = self._timm.patch_embed
        if getattr(embed, "backbone", None) is not None:
            raise UserError(f"method.mocov3.freeze_patch_embed: {type(self.model).__name__}'s patch embedding is a "
                            "convolutional stem (a hybrid), whose random weights MoCo v3 does not freeze: leave "
                            "freeze_patch_embed false")
        for p in embed.proj.parameters():
            p.requires_grad = False

    @property
    def has_class_token(self) -> bool:
        """A ViT with a class token (timm's `cls_token`; register tokens, if any, come after it)."""
        return not self.hierarchical and getattr(self.model, "cls_token", None) is not None

    @property
    def _positioned_prefix_tokens(self) -> int:
        """The prefix tokens (class, registers) that have a row in a ViT's position embedding: none with timm's
        `no_embed_class` (deit3, registers), else all."""
        return 0 if getattr(self.model, "no_embed_class", False) else int(self._timm.num_prefix_tokens)

    @torch.no_grad()
    def pos_embed_at(self, grid: tuple[int, int], saved: torch.Tensor | None = None,
                     trained: tuple[int, int] | None = None) -> torch.Tensor:
        """A ViT's position embedding for the patch grid `grid` (h, w): `saved` [1, P + H*W, D], a table trained on
        the grid `trained` (H, W) (default: this backbone's own), -> [1, P + h*w, D]. A fixed sin-cos table
        (MoCo v3's) is computed for `grid`; a learned one resampled DINO's way with model.init=dino (as its ViT
        takes another size), timm's bicubic way else. P: the prefix tokens that have a position (none with
        timm's `no_embed_class`: deit3, registers)."""
        saved = self._timm.pos_embed if saved is None else saved
        trained = tuple(self._timm.patch_embed.grid_size) if trained is None else trained
        if has_fixed_sincos(self.model):
            return sincos_2d(grid, self._timm.embed_dim).to(saved)
        if self.init == "dino":
            return dino_resample(saved, grid, trained)
        return resample_abs_pos_embed(saved, new_size=list(grid), old_size=list(trained),
                                      num_prefix_tokens=self._positioned_prefix_tokens)

    def at_size(self, size: tuple[int, int]) -> Backbone:
        """This encoder for inputs of `size` (H, W): itself, or a resized copy, so that this one never changes (a
        frozen evaluation at another size). A ViT's position embedding follows `pos_embed_at` (a fixed one
        stays frozen); a Swin keeps the windows it trained with (timm would scale them with the grid, resampling
        every position table) and its attention masks are rebuilt by timm; a size at which a stage's grid is
        smaller than its window, which would shrink the window and its table, raises UserError."""
        if tuple(self._timm.patch_embed.img_size) == tuple(size):
            return self
        if self.hierarchical:
            self.check_windows_at(size)
        resized = copy.deepcopy(self)
        if self.hierarchical:
            resized._timm.set_input_size(img_size=size, window_size=self.windows())
        else:
            resized._timm.set_input_size(img_size=size)
        own = getattr(self.model, "pos_embed", None)
        if not self.hierarchical and own is not None:
            grid = tuple(resized._timm.patch_embed.grid_size)
            resized.model.pos_embed = nn.Parameter(self.pos_embed_at(grid).detach().clone(),
                                                   requires_grad=own.requires_grad)
        return resized.to(own.device if own is not None else next(self.parameters()).device)

    def windows(self) -> list[tuple[int, int]]:
        """A Swin's attention window, stage by stage, as its blocks use it at its input size."""
        return [tuple(stage.blocks[0].window_size) for stage in self._timm.layers]

    def windows_at(self, size: int | None = None) -> list[tuple[int, int]]:
        """A Swin's windows as timm builds it at `size` px, where a stage whose grid is smaller than its window
        has the window shrunk to the grid; None: at a size where none is, the windows its kwargs ask for. Built
        shape-only, on the meta device."""
        with torch.device("meta"):
            model: Any = create_timm(self.arch, {**self.kwargs, "img_size": size or 8192})  # a Swin, read as `_timm`
        return [tuple(stage.blocks[0].window_size) for stage in model.layers]

    def least_size_for(self, windows: list[tuple[int, int]], size: tuple[int, int], multiple: int = 1
                       ) -> tuple[int, list[tuple[int, ...]]] | None:
        """None where every stage of this Swin at `size` (H, W) has at least as many cells as its window in
        `windows`, else (the least size that has, a multiple of the patch and of `multiple`; the stages' grids)."""
        grids = [tuple(map_side(side, self.patch_size, r) for side in size) for r in self.unit_strides]
        if all(g >= w for grid, window in zip(grids, windows, strict=True) for g, w in zip(grid, window, strict=True)):
            return None
        least = max((max(w) - 1) * r + 1 for w, r in zip(windows, self.unit_strides, strict=True))
        return least + -least % math.lcm(self.patch_size, multiple), grids

    def check_windows_at(self, size: tuple[int, int], multiple: int = 1,
                         windows: list[tuple[int, int]] | None = None) -> None:
        """UserError where a stage of this Swin has fewer cells than its window (`windows`, default: its own) at
        `size` (timm would shrink the window, and resample its position table), naming the least size that fits
        (a multiple of the patch and of `multiple`: the stride a caller's maps need)."""
        windows = windows or self.windows()
        if (short := self.least_size_for(windows, size, multiple)) is not None:
            raise UserError(f"at {size[0]}x{size[1]} px a stage of this Swin has fewer cells than its window "
                            f"(grids {short[1]}, windows {windows}), which would shrink the window and change its "
                            f"position table: evaluate it at {short[0]} px or more")

    @torch.no_grad()
    def fit_state(self, state: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
        """Entries of a state dict (this backbone's under `prefix`) trained at another image size, made to fit
        it, in place: a ViT's position embedding [1, P + H*W, D] -> [1, P + h*w, D] for this patch grid
        (`pos_embed_at`). Returns the keys changed."""
        key = f"{prefix}model.pos_embed"
        own = getattr(self.model, "pos_embed", None)
        if self.hierarchical or own is None or key not in state or state[key].shape == own.shape:
            return []
        saved = state[key]
        prefix_tokens = self._positioned_prefix_tokens
        side = math.isqrt(saved.shape[1] - prefix_tokens)
        if side * side != saved.shape[1] - prefix_tokens or saved.shape[-1] != own.shape[-1]:
            return []  # not a square grid of this width: left for the load to name
        state[key] = self.pos_embed_at(tuple(self._timm.patch_embed.grid_size), saved, (side, side))
        return [key]


def fit_backbones(module: nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """`Backbone.fit_state` for every Backbone of `module` (itself included; `state` is `module`'s, its keys
    under `prefix`): a checkpoint trained at another image size made to fit, in place. Returns the keys changed."""
    return [key for name, sub in module.named_modules() if isinstance(sub, Backbone)
            for key in sub.fit_state(state, f"{prefix}{name}." if name else prefix)]


def integer(value: Any, what: str) -> int:
    """`value` as an int (a numpy or 0-d torch integer too); else TypeError naming `what`."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what} is {value!r}: give an int")
    return operator.index(value)


def resolve_taps(spec: int | Sequence[int], depth: int) -> list[int]:
    """`recon.taps` -> sorted 0-based block indices.

    An int n: n evenly spaced blocks ending with the last, `ceil((i + 1) * depth / n) - 1`
    (depth 12 -> [2, 5, 8, 11], depth 6 -> [1, 2, 4, 5]). A list: block indices, negatives from the end.
    """
    # an integer (a numpy or 0-d torch one too), not a bool (True is an int to Python)
    def whole(v: Any) -> TypeGuard[SupportsIndex]:
        return not isinstance(v, bool) and hasattr(v, "__index__") and getattr(v, "ndim", 0) == 0

    if hasattr(spec, "tolist") and getattr(spec, "ndim", 0) == 1:  # an array or tensor of indices
        spec = spec.tolist()
    if whole(spec):
        spec = operator.index(spec)
    elif isinstance(spec, Sequence) and not isinstance(spec, str) and all(map(whole, spec)):
        spec = [operator.index(t) for t in spec]
    else:
        raise UserError(f"recon.taps={spec!r}: give a count of blocks (an int) or a list of block indices")
    if isinstance(spec, int):
        if not 1 <= spec <= depth:
            raise UserError(f"recon.taps={spec}: need between 1 and {depth} taps for an encoder of {depth} blocks "
                            "(ViT) or stages (Swin)")
        return [math.ceil((i + 1) * depth / spec) - 1 for i in range(spec)]
    if not spec:
        raise UserError("recon.taps is an empty list; give block indices or a count")
    out = []
    for t in spec:
        if not -depth <= t < depth:
            raise UserError(f"recon.taps index {t} out of range for an encoder of {depth} blocks (ViT) or stages "
                            f"(Swin): 0..{depth - 1}, or -{depth}..-1 from the last")
        out.append(t % depth)
    if len(set(out)) != len(out):
        raise UserError(f"recon.taps {list(spec)} names a block (a Swin: a stage) twice")
    return sorted(out)
