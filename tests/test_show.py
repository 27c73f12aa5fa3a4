"""`repre show`: the class-token attention and patch PCA pictures, and two runs side by side."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import last_json, run_cli
from repre.core.pictures import sheet_size
from repre.errors import UserError
from repre.models.backbone import Backbone
from repre.use.show import ATTENTION_NOTE, PCA_NOTE, TILE, cls_attention, patch_pca

VIT = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _plain_cls_attention(encoder: Backbone, x: torch.Tensor) -> torch.Tensor:
    """The last block's class-token weights from its qkv projection and norms: softmax(q k^T * scale), with no
    rotary embedding."""
    attn, seen = encoder.model.blocks[-1].attn, {}
    handle = attn.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))
    with torch.no_grad():
        encoder.model.forward_features(x)
    handle.remove()
    b, n, d = seen["x"].shape
    qkv = attn.qkv(seen["x"]).reshape(b, n, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    h, w = encoder.model.patch_embed.grid_size
    return weights[:, :, 0, encoder.model.num_prefix_tokens:].reshape(b, attn.num_heads, h, w)


def test_cls_attention_equals_the_weights_of_the_query_and_keys():
    torch.manual_seed(0)
    encoder = Backbone("vit_tiny_patch16_224", VIT).eval()
    x = torch.randn(3, 3, 16, 16)
    maps = cls_attention(encoder, x)
    torch.testing.assert_close(maps, _plain_cls_attention(encoder, x), rtol=1e-5, atol=1e-6)
    assert maps.shape == (3, 2, 4, 4) and bool((maps.sum(dim=(2, 3)) < 1).all())  # the class token takes the rest
    assert encoder.model.blocks[-1].attn.fused_attn  # its path put back


def test_cls_attention_holds_a_few_images_weights_at_a_time_and_reads_them_before_dropout(monkeypatch):
    """The unfused path holds B * heads * N^2 weights: a large batch of large images is read a few images at a
    time. In training mode the weights are read before the attention's dropout (they sum to 1 there)."""
    import repre.use.show as show

    torch.manual_seed(0)
    encoder = Backbone("vit_tiny_patch16_224", {**VIT, "attn_drop_rate": 0.5}).eval()
    x = torch.randn(5, 3, 16, 16)
    whole = cls_attention(encoder, x)
    monkeypatch.setattr(show, "ATTENTION_FLOATS", 2 * 2 * 17 * 17)  # two images at a time
    torch.testing.assert_close(cls_attention(encoder, x), whole)
    maps = cls_attention(encoder.train(), x)  # the dropout of the earlier blocks changes the tokens, not the rule
    assert maps.shape == whole.shape and bool((maps.sum(dim=(2, 3)) < 1).all())


@pytest.mark.parametrize("arch", ["vit_small_patch16_rope_224", "eva02_tiny_patch14_224", "beit_base_patch16_224",
                                  "cait_xxs24_224"])
def test_cls_attention_reads_the_blocks_own_weights_or_refuses(arch):
    """Rebuilt from the block's qkv, the weights of a ViT with rotary position embeddings (EVA, rope ViTs) left
    the rotation out, silently; BEiT's and CaiT's attention raised AttributeError. Now: the weights the block
    computes, or a refusal where they are no softmax over the class token and patches (CaiT's patch blocks)."""
    torch.manual_seed(0)
    encoder = Backbone(arch, {**VIT, **({"depth_token_only": 1} if arch.startswith("cait") else {})}).eval()
    x = torch.randn(2, 3, 16, 16)
    if arch.startswith("cait"):
        with pytest.raises(UserError, match="TalkingHeadAttn.* is no softmax over its class token and patches"):
            cls_attention(encoder, x)
        return
    maps = cls_attention(encoder, x)
    assert maps.shape == (2, 2, 4, 4) and bool((maps.sum(dim=(2, 3)) < 1).all())
    if arch != "beit_base_patch16_224":  # the rotation changes the weights
        assert not torch.allclose(maps, _plain_cls_attention(encoder, x), atol=1e-3)


def test_patch_pca_is_the_top_three_components_of_the_patch_features():
    torch.manual_seed(0)
    encoder = Backbone("vit_tiny_patch16_224", VIT).eval()
    x = torch.randn(2, 3, 16, 16)
    rgb = patch_pca(encoder, x)
    assert rgb.shape == (2, 3, 4, 4) and float(rgb.min()) == 0.0 and float(rgb.max()) == 1.0
    with torch.no_grad():
        feats = encoder.model.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW",
                                                    intermediates_only=True)[-1]
    flat = feats.permute(0, 2, 3, 1).reshape(-1, 32)
    flat = flat - flat.mean(dim=0)
    top = torch.linalg.svd(flat, full_matrices=False)[2][0]
    first = rgb[:, 0].reshape(-1)
    corr = torch.corrcoef(torch.stack([first, flat @ top]))[0, 1]
    assert abs(float(corr)) > 0.999  # the red channel is the first component, rescaled


def test_a_swin_has_no_class_token_attention():
    encoder = Backbone("swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 2, "window_size": 4,
                                                       "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2)})
    with pytest.raises(UserError, match="class token"):
        cls_attention(encoder, torch.randn(1, 3, 32, 32))
    assert patch_pca(encoder.eval(), torch.randn(2, 3, 32, 32)).shape[1] == 3


def test_the_notes_of_a_swin_name_its_stages():
    """--block counts a Swin's stages: its notes said "block 1"."""
    from repre.use.show import Panels, notes

    def panels(unit: str) -> Panels:
        return Panels("run", 0, torch.rand(1, 3, 8, 8), torch.rand(1, 3, 2, 2), None, None, None, None, None, None,
                      unit)

    assert notes(torch.rand(1, 3, 8, 8), [panels("stage")], 1) == [PCA_NOTE.format(block="stage 1")]
    assert notes(torch.rand(1, 3, 8, 8), [panels("block")], -1) == [PCA_NOTE.format(block="the last block")]
    assert notes(torch.rand(1, 3, 8, 8), [panels("block")], -2) == [  # it read "block -2", as if it were a name
        PCA_NOTE.format(block="block -2 (counted from the last, -1 the last)")]


def test_show_draws_a_run_beside_another(tiny_run, tmp_path):
    """The tiny RePre run beside itself: image, then per run reconstruction, PCA, mean attention and 2 heads."""
    run, _ = tiny_run
    out = tmp_path / "show.png"
    code, stdout = run_cli(["show", "--checkpoint", str(run), "--compare", str(run), "--out", str(out),
                            "--images", "3"])
    assert code == 0, stdout
    result = last_json(stdout)
    per_run = ["patch means", "reconstruction", "patch PCA", "attention, mean", "mean, on the image", "head 0",
               "head 1"]  # norm_pix
    assert [c.split(": ")[-1] for c in result["columns"]] == ["image", *per_run, *per_run]
    width, height = Image.open(out).size
    # the synthetic images are in colour: no note on gray reconstructions
    notes = [ATTENTION_NOTE.format(block="the last block"), PCA_NOTE.format(block="the last block")]
    assert result["images"] == 3 and (width, height) == sheet_size(3, 15, TILE, True, True, notes=notes)
    strip = Image.open(out).convert("L").crop((0, sheet_size(3, 15, TILE, True, True)[1], width, height))
    assert strip.getextrema()[0] < 64  # the notes are drawn in the strip under the tiles
    assert result["classes"] == [None] * 3  # generated images: numbered labels, no names
    values = result["values"]  # the captions' numbers, per checkpoint and image
    assert len(values) == 2 and values[0] == values[1]  # the same run twice
    assert len(values[0]["reconstruction_db"]) == len(values[0]["patch_means_db"]) == 3
    assert [len(peaks) for peaks in values[0]["attention_peak"]] == [3] * 3  # 2 heads and their mean
    assert all(peak >= 1 for peaks in values[0]["attention_peak"] for peak in peaks)  # 1: a flat map


def test_show_draws_the_block_it_is_asked_for(tiny_run, tmp_path, capsys):
    """--block: another block's attention and patch features (the first block's differ from the last's), said
    under the picture and in the output; a block the encoder lacks exits 2 naming its count."""
    from conftest import tiny_config
    from repre.builder import build_encoder

    encoder = build_encoder(tiny_config()).eval()  # 4 blocks
    x = torch.randn(2, 3, 16, 16)
    assert not torch.equal(cls_attention(encoder, x, 0), cls_attention(encoder, x))
    assert not torch.equal(patch_pca(encoder, x, 0), patch_pca(encoder, x))
    run, _ = tiny_run
    argv = ["show", "--checkpoint", str(run), "--out", str(tmp_path / "x.png"), "--images", "1"]
    code, stdout = run_cli([*argv, "--block", "0"])
    assert code == 0 and last_json(stdout)["block"] == 0
    assert run_cli([*argv, "--block", "4"])[0] == 2
    assert "--block 4: tiny's encoder has 4 blocks, so from 0 to 3 (or from -4 to -1" in capsys.readouterr().err


def test_two_checkpoints_of_a_run_are_named_by_their_steps(tiny_run, tmp_path):
    run, _ = tiny_run
    code, stdout = run_cli(["show", "--checkpoint", str(run / "checkpoints" / "step-00000010.pt"), "--compare",
                            str(run), "--out", str(tmp_path / "show.png"), "--images", "1"])
    groups = {c.split(": ")[0] for c in last_json(stdout)["columns"] if ": " in c}
    assert code == 0 and groups == {f"{run.name}, step 10", f"{run.name}, step 20"}


def test_two_runs_of_one_folder_name_are_named_by_the_folders_that_tell_them_apart(tiny_run, tmp_path):
    """runs/repre/seed1 beside runs/base/seed1: "repre/seed1" and "base/seed1" head their panels, as `repre
    compare` names them (not both "seed1", nor "first" and "second")."""
    import shutil

    run, _ = tiny_run
    for name in ("repre", "base"):
        shutil.copytree(run, tmp_path / name / "seed1", ignore=shutil.ignore_patterns("eval", "tb"))
    code, stdout = run_cli(["show", "--checkpoint", str(tmp_path / "repre" / "seed1"), "--compare",
                            str(tmp_path / "base" / "seed1"), "--out", str(tmp_path / "show.svg"), "--images", "1"])
    groups = [c.split(": ")[0] for c in last_json(stdout)["columns"] if ": " in c]
    assert code == 0 and list(dict.fromkeys(groups)) == ["repre/seed1", "base/seed1"]
    assert all(f">{name}</text>" in (tmp_path / "show.svg").read_text() for name in groups)  # for a paper's figure


def test_each_checkpoint_sees_the_images_as_its_own_evaluation_does(tiny_run):
    """`panels` takes the images as read, of any size, and prepares them as the checkpoint's evaluation does
    (`centre_view` at its own size): not from a copy another checkpoint's size was made from."""
    from repre.core.runtime import setup_runtime
    from repre.data.evaluation import centre_view
    from repre.pretrained import load_checkpoint_config
    from repre.use.show import panels

    run, _ = tiny_run
    loaded = load_checkpoint_config(run)
    g = torch.Generator().manual_seed(0)
    read = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in ((40, 52), (9, 30))]
    drawn = panels(run, loaded, read, setup_runtime(loaded[1].train))
    size = loaded[1].data.image_size
    expected = torch.stack([centre_view(img, size) for img in read]).float() / 255
    assert torch.equal(drawn.images, expected) and drawn.recon.shape == (2, 3, size, size)


def test_attention_on_the_image_is_red_where_the_weight_lies():
    from repre.use.show import on_image

    images = torch.full((1, 3, 8, 8), 0.4)
    maps = torch.zeros(1, 1, 2, 2)
    maps[0, 0, 0, 0] = 1.0  # all the weight on the top-left patch
    drawn = on_image(images, maps)
    assert drawn.shape == images.shape
    assert drawn[0, 0, 0, 0] > 0.8 and drawn[0, 2, 0, 0] == pytest.approx(0.2)  # red there, over the grey
    assert torch.allclose(drawn[0, :, -1, -1], torch.full((3,), 0.2))  # elsewhere the image in grey, halved


def test_attention_maps_keep_their_shape_and_say_how_peaked_they_are():
    """Each map (and the heads' mean) is scaled to [0, 1] for its shape; its largest weight over a flat map's
    says whether that shape means anything (1x: uniform, whatever the scaled picture looks like)."""
    from repre.use.show import scaled_attention

    flat = torch.full((1, 1, 4, 4), 0.9 / 16)
    peaked = torch.full((1, 1, 4, 4), 0.1 / 15)
    peaked[0, 0, 1, 2] = 0.8
    maps, peak = scaled_attention(torch.cat([flat, peaked], dim=1))  # [1, 2 heads, 4, 4]
    assert maps.shape == (1, 3, 4, 4) and float(maps[0, 1].max()) == 1.0 and float(maps[0, 1].min()) == 0.0
    assert peak[0].tolist() == pytest.approx([1.0, 0.8 / (0.9 / 16), (0.9 / 16 + 0.8) / 2 / (0.9 / 16)])


def test_show_names_the_classes_of_a_labelled_folder(tiny_run, tmp_path, image_folder):
    run, _ = tiny_run
    code, stdout = run_cli(["show", "--checkpoint", str(run), "--out", str(tmp_path / "x.png"), "--images", "2",
                            "--set", "data.name=folder", "--set", f"data.root={image_folder}"])
    result = last_json(stdout)
    assert code == 0 and result["classes"] == ["cat", "dog"] and result["labels"] == [0, 1]  # spread over the classes


def test_show_draws_the_images_it_is_given_by_index(tiny_run, tmp_path, image_folder, capsys):
    """--image-index: those test images, in that order (val/ holds 6 cats, then 6 dogs); an index past them or
    an unreadable image exits 2 saying so."""
    run, _ = tiny_run
    argv = ["show", "--checkpoint", str(run), "--out", str(tmp_path / "x.png"), "--set", "data.name=folder",
            "--set", f"data.root={image_folder}"]
    code, stdout = run_cli([*argv, "--image-index", "7,0", "--images", "100"])  # --images is not read then
    result = last_json(stdout)
    assert code == 0 and result["indices"] == [7, 0] and result["classes"] == ["dog", "cat"]
    assert run_cli([*argv, "--image-index", "12"])[0] == 2
    assert "--image-index 12: the images shown are 12, so from 0 to 11" in capsys.readouterr().err
    (image_folder / "val" / "cat" / "0.png").write_bytes(b"not an image")
    assert run_cli([*argv, "--image-index", "0"])[0] == 2
    assert "--image-index 0 cannot be read" in capsys.readouterr().err


def test_show_draws_embeds_test_images_whatever_the_runs_eval_split(tiny_run, tmp_path):
    """A run evaluated on a held-out part of its training images (eval.split=val) still shows the test images
    that `repre embed --split test` indexes: --image-index names the same images in both."""
    from repre.pretrained import load_checkpoint_config
    from repre.use.embed import embed_source
    from repre.use.show import chosen_images

    run, _ = tiny_run
    _, cfg = load_checkpoint_config(run, ["data.name=synthetic"])
    cfg.eval.split, cfg.eval.val_size = "val", 16
    _, images, labels, _ = chosen_images(cfg, [0, 20])
    test = embed_source(cfg, "test")
    for image, label, i in zip(images, labels, [0, 20], strict=True):
        expected, expected_label = test.load(i)
        assert torch.equal(image, expected) and label == expected_label


def test_show_needs_at_least_one_image_and_at_most_a_readable_picture(tiny_run, tmp_path):
    run, _ = tiny_run
    code, stdout = run_cli(["show", "--checkpoint", str(run), "--out", str(tmp_path / "x.png"), "--images", "0"])
    assert code == 2
    code, stdout = run_cli(["show", "--checkpoint", str(run), "--out", str(tmp_path / "x.png"), "--images", "65"])
    assert code == 2 and not (tmp_path / "x.png").exists()  # a picture 65 rows tall: refused before any work


def test_show_draws_an_unlabelled_folders_training_images(tiny_run, tmp_path):
    import numpy as np

    from conftest import save_png

    for i in range(3):  # no train/ or val/: pre-training images without labels or a held-out split
        save_png(tmp_path / "photos" / f"{i}.png", np.full((28, 28, 3), 80 * i, np.uint8))
    run, _ = tiny_run
    code, stdout = run_cli(["show", "--checkpoint", str(run), "--out", str(tmp_path / "x.png"), "--images", "2",
                            "--set", "data.name=folder", "--set", f"data.root={tmp_path / 'photos'}"])
    assert code == 0 and last_json(stdout)["images"] == 2 and last_json(stdout)["labels"] == [None, None]


def test_show_replaces_an_unreadable_image_by_the_next(tiny_run, tmp_path, image_folder, repre_log):
    """--images N draws N images: an unreadable pick gives way to the next readable image not shown yet."""
    run, _ = tiny_run
    (image_folder / "val" / "cat" / "0.png").write_bytes(b"not an image")  # the first pick of val/
    code, stdout = run_cli(["show", "--checkpoint", str(run), "--out", str(tmp_path / "x.png"), "--images", "2",
                            "--set", "data.name=folder", "--set", f"data.root={image_folder}"])
    result = last_json(stdout)
    assert code == 0 and result["images"] == 2 and result["labels"] == [0, 1]
    assert any("not shown" in m and "0.png" in m for m in repre_log.messages)
