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


def test_tap_rule():
    assert resolve_taps(4, 12) == [2, 5, 8, 11]
    assert resolve_taps(4, 6) == [1, 2, 4, 5]
    assert resolve_taps(1, 6) == [5]
    assert resolve_taps([-1, 0], 6) == [0, 5]
    with pytest.raises(UserError, match="out of range"):
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
    with pytest.raises(UserError, match="unknown model.arch"):
        Backbone("vit_nonexistent_patch3", {})


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


def test_freeze_patch_embed():
    enc = tiny_vit()
    enc.freeze_patch_embed()
    assert not any(p.requires_grad for p in enc.model.patch_embed.parameters())
    assert isinstance(enc.model.patch_embed, nn.Module)
