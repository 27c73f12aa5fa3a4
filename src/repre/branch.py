"""RePre's reconstruction branch as a building block for any PyTorch training loop.

The branch the presets train (`repre.reconstruction.RePre` holds one): a light convolutional decoder fuses a
timm ViT's or Swin's features from several depths and reconstructs the pixels; its loss joins any
self-supervised loss:

    branch = ReconstructionBranch(vit, taps=4)           # the decoder only: branch.parameters()
    pooled, maps = branch.encode(images)                 # one encoder forward: embedding + tap maps
    loss = ssl_loss(head(pooled), ...) + 1.0 * branch.loss(maps, images)

or, at the cost of a second encoder forward, `loss = ssl_loss + 1.0 * branch(images)`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn

from repre.errors import UserError
from repre.losses import reconstruction_loss
from repre.models.backbone import Backbone, map_side, resolve_taps
from repre.models.decoder import Decoder, Lateral


class ReconstructionBranch(nn.Module):
    """Tap maps of `encoder` -> pixels [B, 3, H, W] -> the reconstruction loss against normalized images.

    `encoder`: a timm VisionTransformer or SwinTransformer (or a `repre.models.Backbone`). The branch keeps a
    reference to it, not its parameters: `branch.parameters()` are the decoder's, so an optimizer can take the
    encoder's and the branch's without counting the encoder twice. `taps`: n evenly spaced blocks (Swin: stages)
    ending with the last, or a list of 0-based indices. The other arguments are the `recon.*` config keys.
    """

    def __init__(
        self,
        encoder: nn.Module,
        taps: int | Sequence[int] = 4,
        *,
        width: int = 128,
        norm_pix: bool = True,
        upsample: str = "bilinear",
        out_stride: int = 4,
    ) -> None:
        super().__init__()
        power_of_two = type(out_stride) is int and out_stride >= 1 and not out_stride & (out_stride - 1)
        if not power_of_two:
            raise UserError(f"recon.out_stride={out_stride!r}: a power of two (1, 2, 4, ...), the pixels each output "
                            "cell of the decoder's last convolution writes a side of")
        if not isinstance(norm_pix, bool):  # "no" or 0.0 would read as true or false by Python's truth
            raise TypeError(f"norm_pix={norm_pix!r}: True (per-patch normalized targets) or False")
        backbone = Backbone.from_model(encoder)  # a timm model wrapped; a Backbone as it is
        if getattr(backbone.model.patch_embed, "dynamic_img_pad", False):
            raise ValueError("the encoder pads images to a multiple of its patch (dynamic_img_pad=True), so its "
                             "maps are of larger images than the targets: build it without dynamic_img_pad and give "
                             "images whose sides are multiples of the patch")
        if getattr(getattr(backbone.model, "patch_drop", None), "prob", 0.0) > 0:
            raise ValueError("the encoder drops patch tokens while it trains (patch_drop_rate > 0), so its maps lack "
                             "the patches the decoder needs: build it without patch_drop_rate (or train without "
                             "the reconstruction branch)")
        self._backbone = (backbone,)  # a tuple: not a submodule, its parameters stay the caller's
        self.taps = resolve_taps(taps, backbone.num_units)
        channels = [backbone.unit_channels[t] for t in self.taps]
        strides = [backbone.unit_strides[t] for t in self.taps]
        if out_stride > min(strides):
            most = 1 << (min(strides).bit_length() - 1)  # the largest power of two not above it
            raise UserError(f"recon.out_stride={out_stride} is coarser than the encoder's finest tapped map "
                            f"(stride {min(strides)}): use at most {most}")
        ratio = min(strides) // out_stride
        if min(strides) % out_stride or ratio & (ratio - 1):  # the decoder doubles its resolution step by step
            raise UserError(f"the encoder's finest tapped map has stride {min(strides)} (its patch), which x2 steps "
                            f"from recon.out_stride={out_stride} do not reach: the branch needs an encoder whose "
                            "patch is a power of two (vit_*_patch16, patch8, ...; not patch14)")
        self.decoder = Decoder(channels, min(strides), width, upsample=upsample, out_stride=out_stride)
        self.strides = strides  # of the tapped maps: `resamples` reads them
        self.norm_pix = norm_pix
        self.patch_size = backbone.patch_size
        self._compiled_loss: Callable[..., torch.Tensor] | None = None  # `compile_loss`

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    def resamples(self, size: int) -> bool:
        """Whether reconstructing size x size views interpolates: x2 steps, taps at different strides (the
        deeper map resized to the shallower one) or a last resize to the views' size."""
        d = self.decoder
        # past `size` (a Swin's padded grid): the padding cut off, not a resize
        reached = map_side(size, self.patch_size, d.in_stride) * 2 ** len(d.up) * d.out_stride
        return bool(len(d.up)) or len(set(self.strides)) > 1 or reached < size

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """images [B, 3, H, W] -> (pooled embedding [B, D], tap maps: list of [B, C_i, H/s_i, W/s_i]) from one
        forward of the encoder (with its gradients)."""
        return self.backbone(images, self.taps)

    def reconstruct(self, maps: Sequence[torch.Tensor], size: int | tuple[int, int]) -> torch.Tensor:
        """Tap maps (list of [N, C_i, H/s_i, W/s_i], `encode`'s) -> pixels [N, 3, *size] (size: (H, W), or a
        side: a square), in the loss's space (normalized pixels; per-patch normalized pixels with norm_pix)."""
        return self.decoder(maps, size)

    def loss(self, maps: Sequence[torch.Tensor], targets: torch.Tensor,
             rows: torch.Tensor | None = None) -> torch.Tensor:
        """Tap maps (list of [N, C_i, H/s_i, W/s_i]) and the images they should give back (normalized,
        [N, 3, H, W]) -> the scalar loss. `rows`: the batch rows to reconstruct ([n] indices into maps and
        targets; None: all). Chosen here, a compiled loss (`compile_loss`) reads only those rows of the maps.
        Targets of another size than the images the maps were made from raise ValueError (a Swin's maps of a
        padded grid cover more: its patch grid halved per stage, an odd side rounded up)."""
        self._check_maps(maps)
        finest = min(range(len(maps)), key=lambda i: self.strides[i])
        stride, p = self.strides[finest], self.patch_size
        made = tuple(n * stride for n in maps[finest].shape[-2:])
        covered = tuple(map_side(t, p, stride) * stride for t in targets.shape[-2:])  # a ViT's: t itself
        if made != covered or any(m < t for m, t in zip(made, targets.shape[-2:], strict=True)):
            raise ValueError(f"targets of {tuple(targets.shape[-2:])} pixels for maps of images of {made}: give the "
                             "images the maps were made from (e.g. not another crop's)")
        return (self._compiled_loss or type(self)._loss)(self, maps, targets, rows)

    def _check_maps(self, maps: Sequence[torch.Tensor]) -> None:
        """ValueError unless `maps` are one per tap, with the tapped units' channels (`encode`'s)."""
        laterals = cast(Iterable[Lateral], self.decoder.laterals)  # a ModuleList's items are typed Module
        channels = [lateral[0].in_channels for lateral in laterals]
        given = [m.shape[1] if m.dim() == 4 else tuple(m.shape) for m in maps]
        if given != channels:
            raise ValueError(f"{len(maps)} maps of channels {given}: the branch reads {len(channels)} maps "
                             f"[N, C, h, w] (taps {self.taps}) of channels {channels}; give encode(images)'s maps")

    def __getstate__(self) -> dict[str, Any]:
        """A pickled branch (torch.save of the module) leaves its compiled loss: a loaded one computes eagerly
        until `compile_loss` again. A deep copy keeps it (`__deepcopy__`)."""
        return {**super().__getstate__(), "_compiled_loss": None}

    def __deepcopy__(self, memo: dict[int, Any]) -> ReconstructionBranch:
        """A copy with its own decoder that computes with the same compiled loss (which takes the branch as its
        argument), where pickling leaves it."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = {k: (v if k == "_compiled_loss" else copy.deepcopy(v, memo)) for k, v in self.__dict__.items()}
        new.__setstate__(state)
        return new

    def _loss(self, maps: Sequence[torch.Tensor], targets: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is not None:  # one gather a tensor: its backward writes one zero gradient (strided slices: two);
            # indexing keeps a ViT map's channels-last layout, which the decoder's laterals read (index_select: NCHW)
            maps, targets = [m[rows] for m in maps], targets.index_select(0, rows)
        height, width = targets.shape[-2:]
        pred = self.reconstruct(maps, (height, width))
        return reconstruction_loss(pred, targets, norm_pix=self.norm_pix, patch=self.patch_size)

    def compile_loss(self, **options: Any) -> None:
        """torch.compile `loss` (`options`: torch.compile's): the choice of rows, the tap maps' cast to the
        decoder's dtype, the decoder and the loss in one graph, so the cast reads only the chosen rows and the
        cast's and the loss's element-wise work fuse. `reconstruct` stays eager. The compiled function
        takes the branch as its argument: a copy of the branch computes with its own decoder."""
        if self._compiled_loss is None:  # compiled once
            self._compiled_loss = torch.compile(type(self)._loss, **options)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """images [B, 3, H, W] -> the loss of reconstructing `targets` (default: the images) from their tap maps.
        Runs the encoder once more; `encode` + `loss` share the forward of a loss you already compute."""
        _, maps = self.encode(images)
        return self.loss(maps, images if targets is None else targets)
