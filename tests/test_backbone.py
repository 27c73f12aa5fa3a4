import copy
import math

import pytest
import torch
from torch import nn

from repre.errors import UserError
from repre.models.backbone import Backbone, resolve_taps


def tiny_vit(patch=4, size=16, depth=4, dim=32) -> Backbone:
    return Backbone(
        "vit_tiny_patch16_224", dict(img_size=size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=2)
    )


@pytest.mark.parametrize(
    "patch,size,depth,taps",
    [(4, 16, 4, [0, 1, 2, 3]), (4, 28, 6, [1, 2, 4, 5]), (2, 12, 3, [2]), (8, 32, 5, [0, 4]), (7, 28, 2, [1])],
)
def test_tap_maps_have_the_patch_grid(patch, size, depth, taps):
    enc = tiny_vit(patch, size, depth)
    pooled, maps = enc(torch.randn(3, 3, size, size), taps)
    assert pooled.shape == (3, 32)
    assert [m.shape for m in maps] == [torch.Size([3, 32, size // patch, size // patch])] * len(taps)


def test_pooled_equals_plain_forward():
    enc = tiny_vit().eval()
    x = torch.randn(2, 3, 16, 16)
    with_taps, _ = enc(x, [1, 3])
    without, maps = enc(x)
    assert maps == []
    torch.testing.assert_close(with_taps, without)
    torch.testing.assert_close(without, enc.model(x))


def test_tap_maps_are_the_blocks_outputs_before_the_final_norm():
    """The decoder reads each tapped block's (a Swin: stage's) output as it leaves the block: its patch tokens
    on the grid, the class token left out and no final norm (the last block's map too)."""
    enc = tiny_vit(depth=4).eval()
    swin = Backbone("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=2, window_size=4, embed_dim=16,
                                                         depths=(1, 1, 1), num_heads=(1, 2, 4))).eval()
    for model, units, taps in ((enc, enc.model.blocks, [1, 3]), (swin, swin.model.layers, [0, 2])):
        seen = {}
        for i in taps:
            units[i].register_forward_hook(lambda m, inputs, out, i=i, seen=seen: seen.__setitem__(i, out))
        x = torch.randn(2, 3, 16, 16) if model is enc else torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            _, maps = model(x, taps)
        for i, got in zip(taps, maps, strict=True):
            out = seen[i]
            if model is enc:  # [B, 1 + 16, C]: the class token first, then the 4 x 4 grid
                want = out[:, enc.model.num_prefix_tokens:].unflatten(1, (4, 4)).permute(0, 3, 1, 2)
            else:  # timm's Swin stages give NHWC
                want = out.permute(0, 3, 1, 2)
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_tap_rule():
    assert resolve_taps(4, 12) == [2, 5, 8, 11]
    assert resolve_taps(4, 6) == [1, 2, 4, 5]
    assert resolve_taps(1, 6) == [5]
    assert resolve_taps([-1, 0], 6) == [0, 5]
    with pytest.raises(UserError, match=r"out of range for an encoder of 6 blocks \(ViT\) or stages \(Swin\)"):
        resolve_taps([6], 6)
    with pytest.raises(UserError, match="between 1 and 6"):
        resolve_taps(7, 6)
    with pytest.raises(UserError, match="twice"):
        resolve_taps([5, -1], 6)


def test_model_without_forward_intermediates_is_refused(monkeypatch):
    import timm

    class NoIntermediates(nn.Module):
        blocks = patch_embed = None

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: NoIntermediates())
    with pytest.raises(UserError, match="forward_intermediates"):
        Backbone("vit_tiny_patch16_224", {})


def test_non_vit_is_refused():
    with pytest.raises(UserError, match="vision transformer"):
        Backbone("mobilenetv3_small_050", {})


def test_unknown_arch_is_refused():
    with pytest.raises(UserError, match="unknown model.arch 'vit_nonexistent_patch3': .*a timm vision transformer"):
        Backbone("vit_nonexistent_patch3", {})
    with pytest.raises(UserError, match=r"did you mean vit_pico_patch4\b"):  # a typo: the nearest names
        Backbone("vit_pico_ptach4", {})
    with pytest.raises(UserError, match=r"did you mean vit_small_patch16_224\b"):
        Backbone("vit_smal_patch16_224", {})


def _grads_and_calls(checkpointing: bool):
    torch.manual_seed(0)
    enc = tiny_vit()
    enc.set_grad_checkpointing(checkpointing)
    calls = []
    for blk in enc.model.blocks:
        blk.register_forward_pre_hook(lambda *_: calls.append(1))  # pre: recompute may stop early
    x = torch.randn(4, 3, 16, 16)
    pooled, maps = enc(x, [1, 3])
    (pooled.square().mean() + sum(m.mean() for m in maps)).backward()
    return {n: p.grad.clone() for n, p in enc.named_parameters()}, len(calls)


def test_gradient_checkpointing_works_through_the_wrapper():
    plain, plain_calls = _grads_and_calls(False)
    ckpt, ckpt_calls = _grads_and_calls(True)
    assert plain_calls == 4
    assert ckpt_calls == 8  # each block's forward runs again in backward: checkpointing is really on
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6)


def test_freeze_patch_embed_freezes_the_projection_alone():
    """As moco-v3's vits.py:43-51: a Swin's norm after the projection trained frozen at 1 and 0, and a hybrid
    ViT's whole convolutional stem was frozen at its random weights."""
    import timm

    enc = tiny_vit()
    enc.freeze_patch_embed()
    assert not any(p.requires_grad for p in enc.model.patch_embed.parameters())
    swin = Backbone.from_model(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0,
                                                 depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1)))
    swin.freeze_patch_embed()
    frozen = {n for n, p in swin.model.patch_embed.named_parameters() if not p.requires_grad}
    assert frozen == {"proj.weight", "proj.bias"} and swin.model.patch_embed.norm.weight.requires_grad
    hybrid = Backbone.from_model(timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, num_classes=0,
                                                   img_size=32, depth=1))
    with pytest.raises(UserError, match="a convolutional stem .* leave freeze_patch_embed false"):
        hybrid.freeze_patch_embed()


def _official_sincos_row(r: int, c: int, dim: int) -> list[float]:
    """MoCo v3's embedding of the patch at row r, column c (vits.py:53-69, on a square grid), written out."""
    quarter = dim // 4
    omegas = [1.0 / 10000.0 ** (k / quarter) for k in range(quarter)]
    return ([math.sin(r * o) for o in omegas] + [math.cos(r * o) for o in omegas]
            + [math.sin(c * o) for o in omegas] + [math.cos(c * o) for o in omegas])


def test_mocov3_position_embedding_is_the_official_fixed_sincos():
    from repre.models.mocov3_vit import sincos_2d

    emb = sincos_2d((3, 3), 8)
    assert emb.shape == (1, 10, 8) and torch.equal(emb[0, 0], torch.zeros(8))  # the class token's row is zero
    for r in range(3):
        for c in range(3):
            torch.testing.assert_close(emb[0, 1 + 3 * r + c], torch.tensor(_official_sincos_row(r, c, 8)))


def test_mocov3_init_follows_the_official_rules():
    """vits.py:31-47: xavier-uniform linears (q, k, v bounded as three [D, D] matrices), zero biases, class token
    N(0, 1e-6), the patch projection xavier-uniform over 3 * p * p inputs; the position embedding frozen."""
    torch.manual_seed(0)
    enc = Backbone("vit_small_patch16_224", {"num_heads": 12}, init="mocov3").requires_grad_(False)
    m, d = enc.model, 384
    qkv, fc1 = m.blocks[0].attn.qkv.weight, m.blocks[0].mlp.fc1.weight
    for weight, bound in ((qkv, math.sqrt(6 / (d + d))), (fc1, math.sqrt(6 / (d + 4 * d))),
                          (m.patch_embed.proj.weight, math.sqrt(6 / (3 * 16 * 16 + d)))):
        assert weight.abs().max() <= bound and weight.abs().max() > 0.99 * bound  # uniform(-bound, bound)
    assert all(float(mod.bias.abs().max()) == 0 for mod in m.modules() if isinstance(mod, torch.nn.Linear))
    assert float(m.cls_token.std()) < 3e-6 and float(m.patch_embed.proj.bias.abs().max()) == 0
    assert m.blocks[0].attn.num_heads == 12
    assert not Backbone("vit_small_patch16_224", {"num_heads": 12}, init="mocov3").model.pos_embed.requires_grad


@pytest.mark.parametrize("arch,kwargs,depth,dim", [("vit_small_patch16_224", {"num_heads": 12}, 12, 384),
                                                   ("vit_base_patch16_224", {}, 12, 768)])
def test_mocov3_vits_have_the_official_parameter_count(arch, kwargs, depth, dim):
    """vits.py:115-126 (patch 16, mlp ratio 4, qkv bias), without the classifier the method replaces."""
    block = (2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim)  # norm, qkv, proj
             + 2 * dim + (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim))  # norm, fc1, fc2
    official = (3 * 16 * 16 * dim + dim) + dim + 197 * dim + depth * block + 2 * dim  # patch, cls, pos, blocks, norm
    enc = Backbone(arch, {"img_size": 224, **kwargs}, init="mocov3")
    assert sum(p.numel() for p in enc.parameters()) == official


@pytest.mark.parametrize("init", ["mocov3", "dino"])
@pytest.mark.parametrize("layout", [
    {"class_token": False, "global_pool": "avg"},
    {"no_embed_class": True},  # deit3's: the table covers the patches alone
    {"pos_embed": "none"},
    {"class_token": False, "reg_tokens": 1, "global_pool": "avg"},  # one prefix token, a register
], ids=["no-class-token", "no-embed-class", "no-table", "a-register"])
def test_mocov3_and_dino_init_need_a_class_token_first_and_a_table_over_it(init, layout):
    """Both replace timm's position step with one that puts the class token first and adds a table covering
    it: any other layout is refused in words (MoCo v3's crashed on three of these)."""
    with pytest.raises(UserError, match=f"model.init={init} does not fit .*use model.init=timm"):
        Backbone("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
                                          "num_heads": 2, **layout}, init=init)


@pytest.mark.parametrize("init", ["mocov3", "dino"])
def test_mocov3_and_dino_init_for_other_input_sizes_need_timm_s_vit_position_step(init):
    """With dynamic_img_size both replace timm VisionTransformer's `_pos_embed`; an Eva's returns its rotary
    table too, so the replacement built and then failed at every forward ("not enough values to unpack").
    Refused at the build instead; without dynamic_img_size the Eva takes either initialization."""
    eva = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
    with pytest.raises(UserError, match=f"model.init={init} does not fit eva02_tiny_patch14_224: .*Eva does not"):
        Backbone("eva02_tiny_patch14_224", {**eva, "dynamic_img_size": True}, init=init)
    assert Backbone("eva02_tiny_patch14_224", eva, init=init)(torch.randn(2, 3, 16, 16))[0].shape == (2, 32)


def test_mocov3_init_takes_a_patch_projection_without_a_bias():
    """CLIP's ViTs project patches without a bias: MoCo v3's initialization zeroes the bias where there is one
    (it failed on None)."""
    vit = Backbone("vit_base_patch16_clip_224", {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
                                                 "num_heads": 2}, init="mocov3")
    assert vit.model.patch_embed.proj.bias is None and vit(torch.randn(2, 3, 16, 16))[0].shape == (2, 32)


def test_per_stage_lists_of_two_lengths_are_a_build_error_not_a_traceback():
    """timm raised IndexError for `depths` longer than `num_heads`."""
    from conftest import SWIN_TINY, tiny_config
    from repre.builder import build_encoder

    with pytest.raises(UserError, match=r"cannot build model.arch=swin_pico_patch2_window4 .*set model.kwargs"):
        build_encoder(tiny_config(*SWIN_TINY, "model.kwargs.depths=[1, 1, 1, 1]"))


def test_a_model_that_takes_one_input_size_is_refused_local_crops_in_their_terms():
    """DINO's local crops build the encoder with dynamic_img_size, which a BEiT does not take: the error named the
    model.kwargs the user gave (none of which was wrong) and advised changing them."""
    from conftest import DINO_TINY, tiny_config
    from repre.builder import build_encoder

    beit = tiny_config(*DINO_TINY, "model.arch=beit_base_patch16_224", "model.init=timm")
    with pytest.raises(UserError, match=r"with data.local_crops=2: its crops of data.local_size=8 need a model that "
                                        r"takes other input sizes .*--set data.local_crops=0$"):
        build_encoder(beit)


def test_build_errors_name_the_architecture_the_config_gave():
    """vit_pico_patch4 resolves to timm's vit_tiny_patch16_224, which the errors named; depth 0 was "not a timm
    vision transformer"."""
    from conftest import tiny_config
    from repre.builder import build_encoder

    with pytest.raises(UserError, match=r"model.init=mocov3 does not fit vit_pico_patch4: "):
        build_encoder(tiny_config("model.arch=vit_pico_patch4", "model.init=mocov3",
                                  "model.kwargs={class_token: false, global_pool: avg}"))
    with pytest.raises(UserError, match=r"vit_pico_patch4 is built with no blocks or stages \(depth 0"):
        build_encoder(tiny_config("model.arch=vit_pico_patch4", "model.kwargs={depth: 0}"))


def _bicubic_sample(table: torch.Tensor, out: int, scale: float) -> torch.Tensor:
    """A reference for one axis: table [N, D] -> [out, D] sampled at (i + 0.5) / scale - 0.5 with the cubic
    convolution kernel (a = -0.75, as PyTorch's bicubic), indices clamped at the borders; no antialiasing."""
    def kernel(t: float) -> float:
        t, a = abs(t), -0.75
        return ((a + 2) * t - (a + 3)) * t * t + 1 if t <= 1 else (((t - 5) * t + 8) * t - 4) * a if t < 2 else 0.0

    rows = []
    for i in range(out):
        x = (i + 0.5) / scale - 0.5
        base = math.floor(x)
        rows.append(sum(kernel(x - j) * table[min(max(j, 0), len(table) - 1)] for j in range(base - 1, base + 3)))
    return torch.stack(rows)


def test_dino_init_resamples_the_position_embedding_as_dino_for_a_local_crop():
    """dino vision_transformer.py:174-194: a 96 px crop of a 224 px ViT-S/16 samples the 14 x 14 table at
    6 points per axis, bicubic without antialiasing, at the scale 6.1 / 14; the global crops keep the table."""
    import timm

    torch.manual_seed(0)
    enc = Backbone("vit_small_patch16_224", {"img_size": 224, "dynamic_img_size": True, "depth": 1}, init="dino")
    m = enc.model
    assert 0.015 < float(m.cls_token.detach().std()) < 0.025  # trunc_normal_(std=.02), lines 161-162; timm's is 1e-6
    table = m.pos_embed.detach()[0, 1:].reshape(14, 14, -1)
    rows = torch.stack([_bicubic_sample(table[:, c], 6, 6.1 / 14) for c in range(14)], dim=1)  # [6, 14, D]
    expected = torch.stack([_bicubic_sample(rows[r], 6, 6.1 / 14) for r in range(6)])  # [6, 6, D]
    plain = timm.create_model("vit_small_patch16_224", num_classes=0, img_size=224, dynamic_img_size=True, depth=1)
    plain.load_state_dict(m.state_dict())
    x_global, x_local = torch.randn(2, 3, 224, 224), torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        patches = m.patch_embed(x_local)  # [2, 6, 6, D]
        tokens = m._pos_embed(patches)
        added = tokens[:, 1:] - patches.flatten(1, 2)  # [2, 36, D]
        torch.testing.assert_close(added, expected.flatten(0, 1)[None].expand(2, -1, -1), atol=1e-5, rtol=0)
        torch.testing.assert_close(tokens[:, 0], (m.cls_token + m.pos_embed[:, 0])[0].expand(2, -1))
        assert torch.equal(m(x_global), plain(x_global))  # the trained grid: timm's embedding, unchanged
        assert not torch.allclose(m(x_local), plain(x_local), atol=1e-3)  # timm low-passes it (antialiasing)
    teacher = copy.deepcopy(m)
    assert teacher._pos_embed.__self__ is teacher  # a copy (DINO's teacher) resamples its own table


@pytest.mark.parametrize("extra", [{}, {"no_embed_class": True}, {"reg_tokens": 2, "no_embed_class": True}])
def test_a_position_embedding_of_another_grid_is_resampled_as_timm_does(extra):
    """fit_state: a state dict trained at 16 px (4x4 patches) fits the backbone at 24 px (6x6), with timm's
    resampling and its count of position-less prefix tokens (deit3's no_embed_class, registers)."""
    from timm.layers import resample_abs_pos_embed

    kwargs = {**dict(patch_size=4, embed_dim=32, depth=2, num_heads=2), **extra}
    small = Backbone("vit_tiny_patch16_224", {**kwargs, "img_size": 16})
    big = Backbone("vit_tiny_patch16_224", {**kwargs, "img_size": 24})
    state = {f"encoder.{k}": v for k, v in small.state_dict().items()}
    assert big.fit_state(state, "encoder.") == ["encoder.model.pos_embed"]
    prefix = 0 if extra.get("no_embed_class") else 1
    expected = resample_abs_pos_embed(small.model.pos_embed, new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=prefix)
    torch.testing.assert_close(state["encoder.model.pos_embed"], expected)
    big.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()})  # every other weight fits
    assert big.fit_state(state, "encoder.") == []  # fits now: nothing to change


def test_a_hybrid_vits_token_side_is_its_stem_and_patch_reduction_together():
    """vit_*_r_*: a CNN stem reduces by 4 before 8-px patches: a token is 32 px, as its map's grid says (the
    decoder's steps and norm_pix's patch follow it; the projection's 8 alone left them 4x off)."""
    b = Backbone("vit_tiny_r_s16_p8_224", {"img_size": 64})
    _, maps = b(torch.randn(1, 3, 64, 64), [b.num_units - 1])
    assert b.patch_size == 32 and b.unit_strides[-1] == 32 and maps[0].shape[-2:] == (2, 2)


def test_maps_come_in_the_order_of_the_taps_asked_for():
    b = Backbone("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 4,
                                          "num_heads": 2})
    x = torch.randn(1, 3, 16, 16)
    _, (three, one, last) = b(x, [3, 1, -1])
    _, (one_alone,) = b(x, [1])
    assert torch.equal(one, one_alone) and torch.equal(three, last) and not torch.equal(three, one)
    with pytest.raises(ValueError, match="tap 7: the encoder has 4 blocks, so from -4 to 3"):
        b(x, [7])


def test_a_patch_that_is_not_square_is_refused_in_words():
    """timm's feat_ratio gives an 8x4 patch's larger side, so the branch refused the right images as of
    another size."""
    with pytest.raises(UserError, match="has 8x4 pixel patches: the tap maps and the decoder take square ones"):
        Backbone("vit_tiny_patch16_224", {"img_size": (64, 32), "patch_size": (8, 4), "embed_dim": 32, "depth": 2,
                                          "num_heads": 2})
