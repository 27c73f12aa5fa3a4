import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from repre.builder import build_model
from repre.config import load_config
from repre.errors import UserError
from repre.models.backbone import Backbone, resolve_taps
from repre.models.decoder import Decoder


@pytest.mark.parametrize("stride,size", [(4, 16), (4, 28), (8, 32), (16, 32), (14, 28), (1, 8), (3, 12)])
def test_output_size_equals_input_size(stride, size):
    dec = Decoder([24, 24, 24], stride, width=16)
    maps = [torch.randn(2, 24, size // stride, size // stride) for _ in range(3)]
    assert dec(maps, (size, size)).shape == (2, 3, size, size)


def test_decoder_runs_on_the_meta_device():
    """Shapes only, as FLOP counters and deferred initialisation use it: the meta device has no autocast state
    to ask about."""
    dec = Decoder([24, 24], 4, width=16).to("meta")
    maps = [torch.empty(2, 24, 4, 4, device="meta") for _ in range(2)]
    assert dec(maps, (16, 16)).shape == (2, 3, 16, 16)


def test_hierarchical_maps_fuse_unet_style():
    """Taps at strides 4, 8, 16, 32 (as Swin stages) with different widths."""
    dec = Decoder([16, 32, 64, 128], 4, width=32)
    maps = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip([16, 32, 64, 128], [4, 8, 16, 32], strict=True)]
    assert dec(maps, (64, 64)).shape == (2, 3, 64, 64)


def test_width_halves_at_each_upsampling_step_down_to_8():
    assert [b[0].out_channels for b in Decoder([8], 16, width=128).up] == [64, 32, 16, 8]
    assert [b[0].out_channels for b in Decoder([8], 16, width=32).up] == [16, 8, 8, 8]


@pytest.mark.parametrize("stride,out_stride,size", [(4, 2, 16), (4, 4, 16), (16, 4, 64), (16, 16, 32), (14, 2, 28)])
def test_out_stride_stops_the_x2_steps_and_shuffles_pixels(stride, out_stride, size):
    """recon.out_stride: x2 steps down to that stride, then a 1x1 conv to 3 x out_stride² channels, shuffled."""
    dec = Decoder([24, 24], stride, width=16, out_stride=out_stride)
    maps = [torch.randn(2, 24, size // stride, size // stride) for _ in range(2)]
    assert dec(maps, (size, size)).shape == (2, 3, size, size)
    assert len(dec.up) == int(math.log2(stride // out_stride)) and dec.head.out_channels == 3 * out_stride**2


def test_resizing_after_the_head_equals_resizing_before_it():
    """A stride that is not a power of two ends with a resize: done on the 3 output channels after the 1x1 head
    (cheaper) it equals the resize of the decoder's features before the head (both are affine per pixel)."""
    torch.manual_seed(0)
    dec = Decoder([24, 24], 14, width=16)
    maps = [torch.randn(2, 24, 2, 2) for _ in range(2)]
    lat = [layer(m) for layer, m in zip(dec.laterals, maps, strict=True)]
    x = dec.fuse[0](dec.fuse[1](lat[1]) + lat[0])
    for block in dec.up:
        x = block(dec._resize(x, scale_factor=2.0))
    before = dec.head(dec._resize(x, size=(28, 28)))
    assert torch.allclose(dec(maps, (28, 28)), before, atol=1e-5)


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_maps_of_a_padded_grid_keep_their_cells_aligned_and_the_padding_is_cut_off(upsample):
    """timm's patch merging pads an odd grid at its end: a Swin at 30 px (patch 2) has stages of 15, 8 and 4
    cells covering 30, 32 and 32 px. A deeper map is upsampled by the strides' ratio and its padding cut off
    (a resize to 15 cells stretched 8 over 15), and the output's padded rows are cut off (the first step
    failed: targets of 30 px for maps of 32)."""
    torch.manual_seed(0)
    dec = Decoder([8, 16, 32], 2, width=16, upsample=upsample, out_stride=2)
    maps = [torch.randn(1, c, n, n) for c, n in ((8, 15), (16, 8), (32, 4))]
    deep = torch.randn(1, 16, 8, 8)
    assert torch.equal(dec._to_grid(deep, (15, 15)), dec._resize(deep, scale_factor=2.0)[..., :15, :15])
    assert torch.equal(dec._to_grid(deep[..., :4, :4], (15, 15)),
                       dec._resize(deep[..., :4, :4], scale_factor=4.0)[..., :15, :15])  # two stages apart
    out = dec(maps, (30, 30))
    assert out.shape == (1, 3, 30, 30)
    deepest = Decoder([32], 8, width=16, upsample=upsample, out_stride=2)  # the deepest stage alone: 32 px
    assert torch.equal(deepest(maps[2:], (30, 30)), deepest(maps[2:], (32, 32))[..., :30, :30])


def test_a_swin_at_sizes_whose_stages_are_padded_reconstructs_its_views():
    """The branch at 26, 28 and 30 px on a patch-2 Swin (odd grids at some stage), taps with and without the
    first stage: a finite loss, where the first step raised."""
    import timm

    from repre.branch import ReconstructionBranch

    for size in (26, 28, 30):
        swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=size, patch_size=2, window_size=4,
                                 embed_dim=16, depths=(1, 1, 1), num_heads=(1, 2, 4), num_classes=0)
        for taps in (3, [2], [1, 2]):
            branch = ReconstructionBranch(swin, taps=taps, width=16, out_stride=2)
            images = torch.randn(2, 3, size, size)
            assert torch.isfinite(branch(images)), (size, taps)
    with pytest.raises(ValueError, match="targets of .16, 16. pixels for maps of images of .32, 32."):
        branch.loss(branch.encode(torch.randn(2, 3, 30, 30))[1], torch.randn(2, 3, 16, 16))
    vit = ReconstructionBranch(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                                                 num_classes=0), taps=2, norm_pix=False)
    with pytest.raises(ValueError, match="targets of .26, 26. pixels for maps of images of .32, 32."):
        vit.loss(vit.encode(torch.randn(2, 3, 32, 32))[1], torch.randn(2, 3, 26, 26))  # not a padded grid


def test_out_stride_is_checked():
    with pytest.raises(UserError, match="power of two"):
        load_config("fmnist-mocov3-repre", ["recon.out_stride=3"])
    with pytest.raises(UserError, match="coarser than the encoder's finest tapped map .stride 4"):
        build_model(load_config("fmnist-mocov3-repre", ["recon.out_stride=8"]))


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def decoder_to_encoder_flops(arch: str, kwargs: dict, size: int, taps: int, width: int) -> float:
    enc = Backbone(arch, {"img_size": size, **kwargs}).eval()
    tap_idx = resolve_taps(taps, enc.num_units)
    dec = Decoder([enc.embed_dim] * len(tap_idx), enc.patch_size, width).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        _, maps = enc(x, tap_idx)
        return flops(lambda: dec(maps, (size, size))) / flops(lambda: enc(x, tap_idx))


def test_decoder_cost_vit_s16_224_at_most_10_percent():
    ratio = decoder_to_encoder_flops("vit_small_patch16_224", {}, 224, 4, 128)
    print(f"decoder/encoder FLOPs, ViT-S/16 at 224: {ratio:.3f}")
    assert ratio <= 0.10


def test_decoder_cost_default_preset_is_as_stated():
    """The default preset's decoder (4x4 pixel shuffle at stride 4) costs 4.5% of its encoder's forward FLOPs
    (its preset's comment)."""
    cfg = load_config("fmnist-mocov3-repre")
    model = build_model(cfg).eval()
    enc, dec = model.method.encoder, model.branch.decoder
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        _, maps = enc(x, model.branch.taps)
        ratio = flops(lambda: dec(maps, (28, 28))) / flops(lambda: enc(x, model.branch.taps))
    print(f"decoder/encoder FLOPs, default preset: {ratio:.3f}")
    assert 0.04 <= ratio <= 0.05


@settings(max_examples=25, deadline=None)
@given(
    patch=st.sampled_from([2, 4, 8]),
    grid=st.integers(1, 6),
    depth=st.integers(1, 6),
    n_taps=st.integers(1, 6),
    width=st.sampled_from([8, 16, 24]),
    upsample=st.sampled_from(["bilinear", "nearest"]),
)
def test_taps_and_decoder_shapes_over_random_vits(patch, grid, depth, n_taps, width, upsample):
    """Any plain ViT, image size and tap count: the taps are valid blocks ending with the last, one map each
    at the patch grid, and the decoder returns pixels at the input size."""
    size = patch * grid
    n = min(n_taps, depth)
    taps = resolve_taps(n, depth)
    assert len(taps) == n and taps[-1] == depth - 1 and taps == sorted(set(taps)) and taps[0] >= 0
    enc = Backbone("vit_tiny_patch16_224", dict(img_size=size, patch_size=patch, embed_dim=16, depth=depth,
                                                num_heads=2))
    x = torch.randn(2, 3, size, size)
    pooled, maps = enc(x, taps)
    assert pooled.shape == (2, 16) and [m.shape for m in maps] == [(2, 16, grid, grid)] * n
    dec = Decoder([16] * n, patch, width=width, upsample=upsample)
    assert dec(maps, (size, size)).shape == (2, 3, size, size)


@settings(max_examples=15, deadline=None)
@given(stages=st.integers(1, 4), base=st.sampled_from([8, 16]), size=st.sampled_from([16, 32, 48]))
def test_decoder_shapes_over_random_hierarchies(stages, base, size):
    """Hierarchical taps (stride 2^i, widths doubling per stage, as Swin's) fuse U-Net style to the input size."""
    strides = [2 ** (i + 1) for i in range(stages)]
    chans = [base * 2 ** i for i in range(stages)]
    if size % strides[-1]:
        return
    maps = [torch.randn(1, c, size // s, size // s) for c, s in zip(chans, strides, strict=True)]
    assert Decoder(chans, strides[0], width=16)(maps, (size, size)).shape == (1, 3, size, size)



def test_a_patch_that_x2_steps_cannot_reach_is_refused():
    """A 14-px patch: x2 steps from stride 14 never land on out_stride 4 or 1 (the decoder stopped short and
    stretched its output to the image); the branch says so instead."""
    from repre.branch import ReconstructionBranch

    encoder = Backbone("vit_tiny_patch16_224", {"img_size": 56, "patch_size": 14, "embed_dim": 32, "depth": 2,
                                                "num_heads": 2})
    for out_stride in (1, 4):
        with pytest.raises(UserError, match="needs an encoder whose patch is a power of two"):
            ReconstructionBranch(encoder, taps=2, out_stride=out_stride)
