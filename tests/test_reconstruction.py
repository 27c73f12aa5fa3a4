"""The reconstruction branch's loss and targets: per-patch normalization with its variance floor, clean targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_config
from repre.builder import build_model
from repre.eval.recon import to_pixel_space
from repre.losses import reconstruction_loss
from repre.methods import FRAMEWORK_CLASSES
from repre.methods.base import stack_views


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """MAE's patchify, the reference layout of norm_pix: [B, C, H, W] -> [B, L, patch * patch * C]."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(x: torch.Tensor, patch: int, size: tuple[int, int]) -> torch.Tensor:
    """The inverse of `patchify`: [B, L, patch * patch * C] -> [B, C, H, W]."""
    b, _, d = x.shape
    h, w, c = size[0] // patch, size[1] // patch, d // (patch * patch)
    return x.reshape(b, h, w, patch, patch, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * patch, w * patch)


def flat_patch_with_ripple(level: float = 1 / 255) -> torch.Tensor:
    """[1, 3, 4, 4]: one flat 4x4 patch whose pixels alternate by `level` (a grey level in [0, 1] units)."""
    ripple = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat(2, 2) * level
    return (0.5 + ripple).expand(1, 3, 4, 4).clone()


def test_norm_pix_loss_equals_the_formula():
    target = torch.randn(2, 3, 8, 8)
    pred = torch.randn(2, 3, 8, 8)
    p = patchify(target, 4)
    formula = (patchify(pred, 4) - (p - p.mean(-1, keepdim=True)) / p.var(-1, keepdim=True).sqrt()).abs().mean()
    torch.testing.assert_close(reconstruction_loss(pred, target, norm_pix=True, patch=4), formula, rtol=1e-5, atol=1e-6)
    # low precision is computed in float32, float64 kept (a float64 gradient check saw a float32 loss)
    assert reconstruction_loss(pred.bfloat16(), target, norm_pix=True, patch=4).dtype == torch.float32
    wide = reconstruction_loss(pred.double(), target.double(), norm_pix=True, patch=4)
    assert wide.dtype == torch.float64 and torch.isclose(wide, formula.double(), rtol=1e-5)
    assert reconstruction_loss(pred, target.double(), norm_pix=True, patch=4).dtype == torch.float64


@pytest.mark.parametrize("patch", [2, 4])
def test_norm_pix_loss_equals_maes_patch_layout(patch):
    """The statistics taken in place ([B, 1, H, W] maps) give MAE's loss on patchified images, flat
    (floored) patches included."""
    torch.manual_seed(0)
    target = torch.cat([flat_patch_with_ripple().repeat(1, 1, 2, 3), torch.randn(1, 3, 8, 12)])  # not square
    pred = torch.randn(2, 3, 8, 12)
    p = patchify(target, patch)
    normalized = (p - p.mean(-1, keepdim=True)) / p.var(-1, keepdim=True).clamp(min=1e-6).sqrt()
    reference = (patchify(pred, patch) - normalized).abs().mean()
    torch.testing.assert_close(reconstruction_loss(pred, target, norm_pix=True, patch=patch), reference,
                               rtol=1e-5, atol=1e-6)


def test_pixel_space_inverts_the_normalization():
    """A prediction equal to the normalized target maps back to the target (the recon.png pictures)."""
    target = torch.cat([flat_patch_with_ripple().repeat(1, 1, 2, 2), torch.randn(1, 3, 8, 8)])
    p = patchify(target, 4)
    normalized = (p - p.mean(-1, keepdim=True)) / p.var(-1, keepdim=True).clamp(min=1e-6).sqrt()
    pred = unpatchify(normalized, 4, (8, 8))
    torch.testing.assert_close(to_pixel_space(pred, target, True, 4), target, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_pix,columns", [("false", 2), ("true", 3)])
def test_recon_picture_names_what_each_column_shows(tmp_path, norm_pix, columns):
    """A row an image; for each view: the view, the patch means that a norm_pix reconstruction starts from, the
    reconstruction; PSNRs under the reconstructions and the means."""
    from PIL import Image

    from repre.core.pictures import sheet_size, thumb_side
    from repre.core.runtime import setup_runtime
    from repre.data.splits import train_source
    from repre.eval.recon import save_recon_grid

    cfg = tiny_config(f"recon.norm_pix={norm_pix}", "eval.recon.images=3")
    save_recon_grid(build_model(cfg), cfg, train_source(cfg), tmp_path / "recon.png", setup_runtime(cfg.train))
    size = Image.open(tmp_path / "recon.png").size
    assert size == sheet_size(3, 2 * columns, thumb_side(16), titled=True, captioned=True)  # in colour: no note


def test_a_picture_of_gray_reconstructions_says_why_they_have_colour():
    from repre.eval.recon import GRAY_NOTE, gray_note

    gray = torch.rand(2, 1, 8, 8).expand(-1, 3, -1, -1) + 2e-7 * torch.randn(2, 3, 8, 8)  # as colour jitter leaves
    assert gray_note(gray) == [GRAY_NOTE] and gray_note(torch.rand(2, 3, 8, 8)) == []


def test_the_training_picture_draws_images_spread_over_a_folder(tmp_path, monkeypatch):
    """A folder holds its images class by class: recon.png takes `subset_of`'s spread, not the first class's; an
    unreadable one gives way to an image not drawn (its replacement in training could repeat a row)."""
    from conftest import save_png
    from repre.core.runtime import setup_runtime
    from repre.data.splits import train_source
    from repre.eval import recon

    for i in range(12):
        save_png(tmp_path / "imgs" / ("a" if i < 6 else "b") / f"{i:02d}.png", np.full((16, 16, 3), 20 * i, np.uint8))
    cfg = tiny_config("data.name=folder", f"data.root={tmp_path / 'imgs'}", "eval.recon.images=3")
    drawn = []

    class Recorded(recon.ViewDataset):
        def __getitem__(self, key):
            drawn.append(key[1])
            return super().__getitem__(key)

    monkeypatch.setattr(recon, "ViewDataset", Recorded)
    recon.recon_sheet(build_model(cfg), cfg, train_source(cfg), setup_runtime(cfg.train))
    assert drawn == [0, 4, 8]
    (tmp_path / "imgs" / "a" / "04.png").write_bytes(b"")  # a pick unreadable: a readable one not drawn yet
    drawn.clear()
    recon.recon_sheet(build_model(cfg), cfg, train_source(cfg), setup_runtime(cfg.train))
    assert drawn == [0, 5, 8]


def test_patch_means_are_a_norm_pix_reconstruction_of_zeros():
    from repre.eval.recon import patch_means

    cfg = tiny_config("recon.norm_pix=true")
    branch = build_model(cfg).branch
    x = torch.randn(2, 3, 16, 16)
    means = patch_means(x, branch)  # patch 4
    block = x[0, :, 4:8, 8:12]  # MAE's statistics: over the patch's pixels of every channel
    assert torch.allclose(means[0, :, 4:8, 8:12], block.mean().expand(3, 4, 4), atol=1e-5)


def test_one_view_rows_alternate_by_the_images_global_index():
    from repre.reconstruction import one_view_rows

    x = torch.arange(12)  # [x1; x2] of 6 images: rows 0-5 their first views, rows 6-11 their second
    whole = [0, 2, 4, 7, 9, 11]  # images 0, 2, 4 by their first view; 1, 3, 5 by their second
    assert x[one_view_rows(12)].tolist() == whole
    # two processes, three images each: [x1; x2] of images 0-2 and of images 3-5 (the second starts odd)
    shares = [torch.cat([x[i:i + 3], x[6 + i:9 + i]])[one_view_rows(6, offset=i)] for i in (0, 3)]
    assert sorted(torch.cat(shares).tolist()) == whole  # N processes: the views one process takes
    x = torch.zeros(12, requires_grad=True)  # as the branch chooses them: the gradient reaches those rows only
    x.index_select(0, one_view_rows(12)).backward(torch.arange(1.0, 7.0))
    assert x.grad.tolist() == [1, 0, 2, 0, 3, 0, 0, 4, 0, 5, 0, 6]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_maps_as_token_views_reach_the_decoder_uncopied_with_the_convolutions_values(monkeypatch, precision):
    """A ViT's tap maps reach the decoder as views of its tokens, and its laterals project them as matmuls over
    that layout: the loss and every gradient are those of the 1x1 convolutions on the maps copied to NCHW
    (timm's output), up to the rounding of another order of summation (bf16: of the bf16 results)."""
    from repre.models.backbone import Backbone

    cfg = tiny_config("model.drop_path=0.0", "recon.views=1")
    views = torch.randn(4, 2, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def step(copied: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = build_model(cfg)
        with monkeypatch.context() as m:
            if copied:  # contiguous NCHW maps: the laterals' convolutions read them
                forward = Backbone.forward
                m.setattr(Backbone, "forward", lambda self, x, taps=(): (
                    lambda pooled, maps: (pooled, [t.contiguous() for t in maps]))(*forward(self, x, taps)))
            read = []
            model.branch.decoder.laterals[0].register_forward_pre_hook(lambda _, args: read.append(args[0]))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(views, 0.99)
        assert (read[0].stride(1) == 1) is not copied  # the matmul path reads the chosen rows, channels last
        out["loss"].backward()
        return out["loss"].detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    maps = build_model(cfg).method.encoder(stack_views(views), [1, 3])[1]
    assert not maps[0].is_contiguous() and maps[0].stride(1) == 1  # views of the tokens, not copies
    (loss, grads), (conv_loss, conv_grads) = step(False), step(True)
    tolerance = 1e-2 if precision == "bf16" else 1e-5
    assert torch.allclose(loss, conv_loss, rtol=tolerance)
    assert grads.keys() == conv_grads.keys() and any(n.startswith("branch.") for n in grads)
    for name, grad in grads.items():
        assert (grad - conv_grads[name]).norm() <= tolerance * conv_grads[name].norm() + 1e-12, name


def test_one_view_decodes_half_the_views():
    """recon.views=1: the decoder runs on half the views, the loss is the branch's loss on those views' maps
    and targets, and the contrastive loss is the one with both views reconstructed."""
    torch.manual_seed(0)
    model = build_model(tiny_config("model.drop_path=0.0", "recon.views=1"))
    torch.manual_seed(0)
    both = build_model(tiny_config("model.drop_path=0.0"))
    views = torch.randn(4, 2, 3, 16, 16)
    batch_sizes = []
    model.branch.decoder.register_forward_hook(lambda m, args, out: batch_sizes.append(out.shape[0]))
    one = model(views, 0.99)

    rows = [0, 2, 5, 7]  # of [x1; x2]: images 0 and 2 by their first view, 1 and 3 by their second
    maps = model.method(views, taps=model.branch.taps).maps
    targets = stack_views(views)
    torch.testing.assert_close(one["loss_recon"], model.branch.loss([m[rows] for m in maps], targets[rows]))
    torch.testing.assert_close(one["loss_contrastive"], both(views, 0.99)["loss_contrastive"])
    assert batch_sizes[0] == 4  # 4 of the 8 views


def test_views_is_one_or_two():
    from repre.config import load_config
    from repre.errors import UserError

    with pytest.raises(UserError, match="recon.views must be one of 1, 2"):
        load_config("fmnist-mocov3-repre", ["recon.views=true"])


def test_recon_eval_gives_what_the_patch_statistics_alone_score(monkeypatch):
    """With norm_pix the reconstructions borrow each patch's mean and std from the image: a decoder that
    outputs zeros scores exactly `psnr_patch_means_db`, the floor the reported PSNR is read against."""
    from repre.core.runtime import setup_runtime
    from repre.eval.recon import recon_eval

    cfg = tiny_config("recon.norm_pix=true", "eval.recon.subset=8")
    model, rt = build_model(cfg), setup_runtime(cfg.train)
    decoded = recon_eval(model, cfg, rt, None)
    assert decoded["extra"]["psnr_patch_means_db"] > 0 and decoded["value"] != decoded["extra"]["psnr_patch_means_db"]
    monkeypatch.setattr(model.branch, "reconstruct", lambda maps, size: torch.zeros(len(maps[0]), 3, *size))
    zeros = recon_eval(model, cfg, rt, None)
    assert zeros["value"] == pytest.approx(zeros["extra"]["psnr_patch_means_db"], abs=1e-4)
    raw = tiny_config("recon.norm_pix=false", "eval.recon.subset=8")
    assert "psnr_patch_means_db" not in recon_eval(build_model(raw), raw, rt, None)["extra"]


def test_the_recon_picture_s_images_are_spread_over_a_class_sorted_folder(image_folder, tmp_path):
    """`repre eval recon` draws eval.recon.images test images spread over the split as a subset is: a folder's
    val/cat/* then val/dog/* give one of each class for 2 images (its first 2 were both cats), an unreadable
    one replaced, and the picture has a row each."""
    from PIL import Image

    from repre.core.runtime import setup_runtime
    from repre.data.evaluation import eval_loader
    from repre.eval.recon import recon_eval, spread_images

    folder = ["data.name=folder", f"data.root={image_folder}", "data.image_size=16"]
    cfg = tiny_config(*folder, "eval.recon.images=2")
    dataset = eval_loader(cfg, "test", None).dataset  # 6 cats, then 6 dogs
    assert torch.equal(spread_images(dataset, 2), torch.stack([dataset.read(0)[0], dataset.read(6)[0]]))
    (image_folder / "val" / "cat" / "0.png").write_bytes(b"not an image")  # replaced by the next readable one
    assert torch.equal(spread_images(dataset, 2), torch.stack([dataset.read(1)[0], dataset.read(6)[0]]))
    model, rt = build_model(cfg), setup_runtime(cfg.train)
    assert recon_eval(model, cfg, rt, tmp_path)["value"] > 0
    (tmp_path / "one").mkdir()
    recon_eval(model, tiny_config(*folder, "eval.recon.images=1"), rt, tmp_path / "one")
    assert Image.open(tmp_path / "recon.png").size[1] > Image.open(tmp_path / "one" / "recon.png").size[1]


def test_psnr_is_ten_log10_of_one_over_the_mse():
    from repre.eval.recon import batch_psnr

    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.1)  # mse 0.01: 20 dB
    assert batch_psnr(a, b).tolist() == pytest.approx([20.0, 20.0])


@pytest.mark.parametrize("recon", [False, True], ids=["baseline", "repre"])
@pytest.mark.parametrize("name", sorted(FRAMEWORK_CLASSES))
def test_every_framework_s_targets_follow_its_online_weights(name, recon):
    """Whichever framework and wrapper, a step moves each target of `ema_pairs()` toward its online weights by
    the step's momentum (`Method.ema_then_forward` updates them: no framework repeats it), and every module no optimizer
    trains is such a target (a pair left out would keep its target at the initial weights, and nothing else
    would fail)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(f"method.name={name}", f"recon.enabled={str(recon).lower()}"), num_classes=10)
    pairs = [(p_o, p_t) for online, target in model.method.ema_pairs()
             for p_o, p_t in zip(online.parameters(), target.parameters(), strict=True)]
    with torch.no_grad():
        for p_o, _ in pairs:
            p_o.add_(torch.randn_like(p_o))  # the online weights off their copies
    before = [p_t.detach().clone() for _, p_t in pairs]
    model(torch.randn(4, 2, 3, 16, 16), 0.75)
    for (p_o, p_t), was in zip(pairs, before, strict=True):
        torch.testing.assert_close(p_t, 0.75 * was + 0.25 * p_o)
    frozen = [child for child in model.method.children()  # the copies that no optimizer trains
              if list(child.parameters()) and not any(p.requires_grad for p in child.parameters())]
    assert {id(m) for m in frozen} == {id(target) for _, target in model.method.ema_pairs()}


def test_a_framework_of_ones_own_is_told_what_the_branch_needs_of_it():
    """A framework whose encoder is a bare timm model failed at the first step in timm's words (the taps reached
    its forward as an attention mask); one whose forward drops the taps was told to "give encode(images)'s
    maps", the branch's API rather than its own forward."""
    from repre.methods.base import Method
    from repre.models.backbone import Backbone
    from repre.reconstruction import RePre

    class Bare(Method):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, views, labels=None, local_views=None, taps=()):
            x = stack_views(views)
            pooled, _ = self.encoder(x)  # taps dropped
            return self.outputs(pooled.square().mean(), pooled, [], x)

    vit = Backbone("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
                                            "num_heads": 2})
    with pytest.raises(TypeError, match="Bare.encoder must be a repre Backbone .* not VisionTransformer: set "
                                        r"self.encoder = Backbone.from_model\(model\)"):
        RePre(Bare(vit.model), taps=2)
    with pytest.raises(ValueError, match="Bare.forward returned 0 maps for the branch's 2 taps: pass its `taps` to "
                                         "the encoder"):
        RePre(Bare(vit), taps=2)(torch.randn(2, 2, 3, 16, 16), 0.9)
