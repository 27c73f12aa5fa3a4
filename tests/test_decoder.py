import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from repre.builder import build_model
from repre.config import load_config
from repre.models.backbone import Backbone, resolve_taps
from repre.models.decoder import Decoder


@pytest.mark.parametrize("stride,size", [(4, 16), (4, 28), (8, 32), (16, 32), (14, 28), (1, 8), (3, 12)])
def test_output_size_equals_input_size(stride, size):
    dec = Decoder([24, 24, 24], stride, width=16, min_width=4)
    maps = [torch.randn(2, 24, size // stride, size // stride) for _ in range(3)]
    assert dec(maps, (size, size)).shape == (2, 3, size, size)


def test_hierarchical_maps_fuse_unet_style():
    """Taps at strides 4, 8, 16, 32 (as Swin stages) with different widths."""
    dec = Decoder([16, 32, 64, 128], 4, width=32)
    maps = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip([16, 32, 64, 128], [4, 8, 16, 32], strict=True)]
    assert dec(maps, (64, 64)).shape == (2, 3, 64, 64)


def test_width_halves_at_each_upsampling_step():
    dec = Decoder([8], 16, width=128, min_width=8)
    assert [b[0].out_channels for b in dec.up] == [64, 32, 16, 8]


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def decoder_to_encoder_flops(arch: str, kwargs: dict, size: int, taps: int, width: int, min_width: int) -> float:
    enc = Backbone(arch, {"img_size": size, **kwargs}).eval()
    tap_idx = resolve_taps(taps, enc.depth)
    dec = Decoder([enc.embed_dim] * len(tap_idx), enc.patch_size, width, min_width).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        _, maps = enc(x, tap_idx)
        return flops(lambda: dec(maps, (size, size))) / flops(lambda: enc(x, tap_idx))


def test_decoder_cost_vit_s16_224_at_most_10_percent():
    ratio = decoder_to_encoder_flops("vit_small_patch16_224", {}, 224, 4, 128, 8)
    print(f"decoder/encoder FLOPs, ViT-S/16 at 224: {ratio:.3f}")
    assert ratio <= 0.10


def test_decoder_cost_default_preset_is_as_stated():
    """The default preset's decoder costs 7.5% of its encoder's forward FLOPs (README, BENCHMARKS.md)."""
    cfg = load_config("fmnist-mocov3-repre")
    model = build_model(cfg).eval()
    enc, dec = model.method.encoder, model.decoder
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        _, maps = enc(x, model.method.taps)
        ratio = flops(lambda: dec(maps, (28, 28))) / flops(lambda: enc(x, model.method.taps))
    print(f"decoder/encoder FLOPs, default preset: {ratio:.3f}")
    assert 0.07 <= ratio <= 0.08
