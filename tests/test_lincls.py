"""The linear-probe protocols: the papers' values (facebookresearch/moco-v3 at c349e6e, facebookresearch/dino at
7c446df, SwinTransformer/Transformer-SSL at 4510de1, cited per value), DINO's feature layout, the lr rules, N
processes against one, and resume."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import last_json, run_cli
from repre.config import LinearConfig, config_from_dict, load_config
from repre.core import checkpoint_io as ckpt_io
from repre.core.schedules import warmup_cosine
from repre.errors import UserError
from repre.eval import evaluate
from repre.eval import lincls as lincls_module
from repre.eval.protocols import resolve
from repre.eval.tokens import feature_dim, token_features
from repre.models.backbone import Backbone


@functools.cache
def encoder(kind: str) -> Backbone:
    """narrow: ViT-S-like (narrower than ViT-B); wide: as wide as ViT-B; swin: no class token. All small."""
    if kind == "swin":
        return Backbone("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=2, window_size=4, embed_dim=16,
                                                             depths=(1, 1, 1), num_heads=(1, 2, 4)))
    width, depth, heads = (32, 6, 2) if kind == "narrow" else (768, 2, 12)
    return Backbone("vit_tiny_patch16_224", dict(img_size=16, patch_size=4, embed_dim=width, depth=depth,
                                                 num_heads=heads))


OFFICIAL = {
    "mocov3": {
        "epochs": 90,  # main_lincls.py:49 (--epochs default 90)
        "batch_size": 1024,  # main_lincls.py:53 (-b default 1024, the total batch)
        "base_lr": 3.0,  # CONFIG.md:144 (vit_small) and CONFIG.md:174 (vit_base): --lr=3
        "momentum": 0.9,  # main_lincls.py:60
        "weight_decay": 0.0,  # main_lincls.py:62
        "init_std": 0.01,  # main_lincls.py:168 (normal_(mean=0.0, std=0.01)); bias zero: 169
    },
    "dino": {
        "epochs": 100,  # eval_linear.py:265
        "batch_size": 1024,  # eval_linear.py:270 (128 per GPU) x 8 GPUs (README.md:263)
        "base_lr": 0.001,  # eval_linear.py:266
        "momentum": 0.9,  # eval_linear.py:106
        "weight_decay": 0.0,  # eval_linear.py:107
        "init_std": 0.01,  # eval_linear.py:243 (normal_(mean=0.0, std=0.01)); bias zero: 244
    },
    "moby": {
        "epochs": 100,  # moby_linear.py:92
        "batch_size": 512,  # get_started.md:181-182 (8 GPUs x --batch-size 64)
        "base_lr": 0.5,  # moby_linear.py:71 (--lr 1.0), per 512 images (359)
        "momentum": 0.9,  # moby_linear.py:98
        "nesterov": True,  # optimizer.py:26
        "weight_decay": 0.0,  # moby_linear.py:100
        "warmup_epochs": 5,  # moby_linear.py:93
        "warmup_lr": 2.5e-7,  # config.py:97 (5e-7), per 512 (moby_linear.py:360)
        "min_lr": 2.5e-6,  # config.py:98 (5e-6), per 512 (moby_linear.py:361)
        "label_smoothing": 0.1,  # config.py:59 -> LabelSmoothingCrossEntropy (moby_linear.py:140)
        "clip_grad": 5.0,  # config.py:100 (moby_linear.py:241)
        "drop_path": 0.2,  # moby_linear.py:72; model.train() at 189
        "init_std": 0.02,  # swin_transformer.py:553 (trunc_normal_(std=.02)); bias zero: 555
    },
}
# DINO's features: ViT-S: --n_last_blocks 4, --avgpool_patchtokens false (eval_linear.py:256,258, their
# defaults); ViT-B: --n_last_blocks 1 --avgpool_patchtokens true (README.md:340,344)
DINO_LAYOUT = {"narrow": ("cls", 4), "wide": ("both", 1)}

EXACT = ["train.device=cpu", "train.precision=fp32", "train.num_workers=0", "eval.linear.epochs=2",
         "eval.linear.batch_size=16"]


@pytest.mark.parametrize("name", ["mocov3", "dino", "moby"])
def test_the_protocols_resolve_to_the_official_values(name):
    p = resolve(LinearConfig(protocol=name), encoder("narrow"))
    assert {key: getattr(p, key) for key in OFFICIAL[name]} == OFFICIAL[name]
    assert p.lr_per_step == (name == "moby")  # lr_scheduler.py:20-29, t_in_epochs=False
    assert (p.features, p.blocks) == (DINO_LAYOUT["narrow"] if name == "dino" else ("cls", 1))
    wide = resolve(LinearConfig(protocol=name), encoder("wide"))
    assert (wide.features, wide.blocks) == (DINO_LAYOUT["wide"] if name == "dino" else ("cls", 1))


# each script's test transform at 224: Resize(256, PIL's resampling), CenterCrop(224) (main_lincls.py:290-291;
# eval_linear.py:66-67, interpolation=3; Transformer-SSL data/build.py:137-138)
OFFICIAL_TEST_RESAMPLING = {"mocov3": "BILINEAR", "dino": "BICUBIC", "moby": "BILINEAR"}


@pytest.mark.parametrize("name", ["mocov3", "dino", "moby"])
@pytest.mark.parametrize("shape", [(300, 451), (224, 224), (180, 200)])
def test_test_images_are_resized_as_each_papers_script_resizes_them(name, shape):
    """Every image, an image of 224 x 224 or smaller included, resized to 256 by the script's resampling."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2 as T

    from repre.data.evaluation import centre_view

    g = torch.Generator().manual_seed(0)
    img = T.functional.gaussian_blur((torch.rand(3, *shape, generator=g) * 255).to(torch.uint8), [9, 9], [3.0, 3.0])
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    h, w = shape
    size = (256, int(256 * h / w)) if w < h else (int(256 * w / h), 256)  # as transforms.Resize(256) computes it
    official = np.asarray(pil.resize(size, getattr(Image, OFFICIAL_TEST_RESAMPLING[name])))
    top, left = round((official.shape[0] - 224) / 2), round((official.shape[1] - 224) / 2)
    official = torch.from_numpy(official[top:top + 224, left:left + 224].copy()).permute(2, 0, 1).int()
    ours = centre_view(img, 224, resolve(LinearConfig(protocol=name), encoder("narrow")).test_resize).int()
    other = np.asarray(pil.resize(size, Image.BICUBIC if OFFICIAL_TEST_RESAMPLING[name] == "BILINEAR" else
                                  Image.BILINEAR))
    other = torch.from_numpy(other[top:top + 224, left:left + 224].copy()).permute(2, 0, 1).int()
    # torchvision's antialiased resampling of tensors rounds a few pixels otherwise than PIL's
    assert (ours - official).abs().max() <= 2 and (ours - official).abs().float().mean() < 0.05
    assert (ours - other).abs().float().mean() > 0.1


def test_quick_stays_the_default_with_its_values():
    p = resolve(LinearConfig(), encoder("narrow"))
    assert (p.name, p.features, p.blocks, p.epochs, p.batch_size, p.base_lr) == ("quick", "cls", 1, 30, 1024, None)


def test_lr_scales_with_the_global_batch_and_falls_by_a_cosine_per_epoch():
    """lr = base_lr x batch / 256 (main_lincls.py:196; eval_linear.py:105); epoch e runs at
    lr x 0.5 (1 + cos(pi e / epochs)) (main_lincls.py:501) = CosineAnnealingLR(epochs, eta_min=0) stepped once an
    epoch (eval_linear.py:109,127)."""
    assert resolve(LinearConfig(protocol="mocov3"), encoder("narrow")).lr == 3.0 * 1024 / 256
    dino = resolve(LinearConfig(protocol="dino", batch_size=512), encoder("narrow"))
    assert dino.lr == pytest.approx(0.001 * 512 / 256)
    assert resolve(LinearConfig(protocol="dino", lr=0.01, batch_size=256), encoder("narrow")).lr == 0.01
    epochs, lr = 7, 0.4
    ours = warmup_cosine(lr, 0.0, epochs)
    assert ours.tolist() == pytest.approx([lr * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)])
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=0)
    dino = []
    for _ in range(epochs):
        dino.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert ours.tolist() == pytest.approx(dino)
    from repre.eval.lincls import probe_lrs  # what the probe steps at: each epoch's value for all its steps

    p = resolve(LinearConfig(protocol="mocov3", epochs=epochs, batch_size=256), encoder("narrow"))
    lrs = probe_lrs(p, 3)
    assert lrs.shape == (epochs, 3) and (lrs == lrs[:, :1]).all()
    assert lrs[:, 0].tolist() == pytest.approx([p.lr * 0.5 * (1 + math.cos(math.pi * e / epochs))
                                                for e in range(epochs)])


def test_moby_lr_warms_up_then_follows_timms_cosine_over_every_step():
    """moby_linear.py:359-361 scale lr, warm-up and minimum lr by batch / 512; lr_scheduler.py:20-29 builds timm's
    CosineLRScheduler over all steps (t_initial = epochs x steps, warmup_t = 5 epochs of steps), stepped every
    step: linear from the warm-up lr over the warm-up, then min + (peak - min) (1 + cos(pi t / T)) / 2 with t
    counted from the run's start (warmup_prefix false)."""
    from repre.eval.lincls import probe_lrs

    p = resolve(LinearConfig(protocol="moby", epochs=8, batch_size=256), encoder("swin"))
    steps, peak, start, end = 3, 1.0 * 256 / 512, 5e-7 * 256 / 512, 5e-6 * 256 / 512
    total, warm = 8 * steps, 5 * steps
    want = [start + t * (peak - start) / warm if t < warm
            else end + 0.5 * (peak - end) * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    lrs = probe_lrs(p, steps)
    assert p.lr == peak and lrs.shape == (8, steps)
    assert lrs.flatten().tolist() == pytest.approx(want, rel=1e-9)
    mocov3 = probe_lrs(resolve(LinearConfig(protocol="mocov3", epochs=4), encoder("narrow")), steps)
    assert torch.equal(mocov3, mocov3[:, :1].expand(-1, steps))  # once an epoch


def test_moby_probe_runs_its_encoder_with_stochastic_depth_and_smooths_its_labels(tiny_run, tmp_path, monkeypatch):
    """The head trains on features of the encoder in train mode with drop path 0.2 (each call draws other
    blocks to drop), with label smoothing 0.1 and its gradient clipped at 5; the test runs in eval mode."""
    run, _ = tiny_run
    seen = []
    real = lincls_module.frozen_features

    def spy(encoder, x, protocol, rt):
        rates = [m.drop_prob for m in encoder.modules() if hasattr(m, "drop_prob")]
        seen.append((encoder.training, round(max(rates, default=0.0), 6)))
        return real(encoder, x, protocol, rt)

    losses, clips = [], []
    cross_entropy, clip = lincls_module.F.cross_entropy, lincls_module.nn.utils.clip_grad_norm_
    monkeypatch.setattr(lincls_module, "frozen_features", spy)
    monkeypatch.setattr(lincls_module.F, "cross_entropy", lambda *a, **kw: losses.append(kw) or cross_entropy(*a, **kw))
    monkeypatch.setattr(lincls_module.nn.utils, "clip_grad_norm_", lambda ps, m: clips.append(m) or clip(ps, m))
    result = evaluate("linear", run, [*EXACT, "eval.linear.protocol=moby", "eval.linear.epochs=1"], tmp_path / "moby")
    assert result["extra"]["protocol"] == "moby" and 0 <= result["value"] <= 1
    assert seen[0] == (True, 0.2) and seen[-1] == (False, 0.2)
    assert losses and all(kw["label_smoothing"] == 0.1 for kw in losses) and clips and set(clips) == {5.0}


def test_dino_features_concatenate_class_tokens_and_the_last_blocks_mean_patch_token():
    """ViT-S style: the class tokens of the last 4 blocks, each after the final norm (4 x D); ViT-B style: the
    class token and the mean patch token of the last block (2 x D), as get_intermediate_layers (DINO's
    vision_transformer.py:225-233) and eval_linear.py:166-170 build them (DINO interleaves the two for its
    n = 1: the same features in another order, which a linear head with i.i.d. initial weights does not see)."""
    x, vit = torch.randn(3, 3, 16, 16), encoder("narrow")
    model = vit.model.eval()
    with torch.no_grad():
        tokens = model.forward_features(x)  # [B, 1 + N, D] after the final norm
        cls4, both = token_features(vit, x, "cls", 4), token_features(vit, x, "both", 1)
    d = vit.embed_dim
    assert cls4.shape == (3, 4 * d) == (3, feature_dim(vit, "cls", 4))
    assert both.shape == (3, 2 * d) == (3, feature_dim(vit, "both", 1))
    torch.testing.assert_close(cls4[:, -d:], tokens[:, 0])
    torch.testing.assert_close(both, torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1))
    blocks = [model.norm(h)[:, 0] for h in intermediate_tokens(model, x)[-4:]]
    torch.testing.assert_close(cls4, torch.cat(blocks, dim=1))


def intermediate_tokens(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's output tokens [B, 1 + N, D] before the final norm (what DINO's get_intermediate_layers
    normalizes), caught by hooks during a plain forward."""
    outs: list[torch.Tensor] = []
    hooks = [blk.register_forward_hook(lambda _m, _i, out: outs.append(out)) for blk in model.blocks]
    with torch.no_grad():
        model.forward_features(x)
    for hook in hooks:
        hook.remove()
    return outs


def test_swin_reads_the_mean_of_its_last_stage_and_refuses_a_class_token():
    for name in ("mocov3", "dino", "moby"):
        p = resolve(LinearConfig(protocol=name), encoder("swin"))
        assert (p.features, p.blocks) == ("avg", 1)
    with pytest.raises(UserError, match="no class token: use eval.linear.features=avg"):
        resolve(LinearConfig(protocol="dino", features="cls"), encoder("swin"))


def test_register_tokens_are_not_read_as_a_class_token():
    """A ViT with registers reads its class token (the first prefix token); one with registers and no class
    token has none to read, nor to draw the attention of."""
    from repre.use.show import cls_attention

    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, reg_tokens=2)
    with_cls = Backbone("vit_tiny_patch16_224", kwargs)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(token_features(with_cls, x, "cls", 1),
                                   with_cls.model.eval().forward_features(x)[:, 0])
    registers_only = Backbone("vit_tiny_patch16_224", {**kwargs, "class_token": False, "global_pool": "avg"})
    with pytest.raises(UserError, match="no class token: use eval.linear.features=avg"):
        resolve(LinearConfig(protocol="dino", features="cls"), registers_only)
    with pytest.raises(UserError, match="has no class token: attention maps need a ViT"):  # repre show's
        cls_attention(registers_only, x)


def test_a_vit_pooling_its_patch_tokens_is_read_after_its_norm_that_follows_the_mean():
    """global_pool='avg' makes timm's (and MAE's) final norm `fc_norm`, after the mean, and `norm` an identity:
    the probes read the un-normed mean (and by default a class token the model never pooled), the dense probe
    un-normed maps."""
    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, global_pool="avg")
    for extra in ({}, {"class_token": False}):
        vit = Backbone("vit_tiny_patch16_224", {**kwargs, **extra}).eval()
        with torch.no_grad():
            vit.model.fc_norm.weight.uniform_(0.5, 2.0)  # not the identity a fresh LayerNorm is on a mean
            x = torch.randn(2, 3, 16, 16)
            for name in ("quick", "mocov3", "dino", "moby"):
                p = resolve(LinearConfig(protocol=name), vit)
                assert (p.features, p.blocks) == ("avg", 1)
            torch.testing.assert_close(token_features(vit, x, "avg", 1), vit(x)[0])  # its own embedding
            tokens = vit.model.forward_features(x)[:, vit.model.num_prefix_tokens:]  # [B, 16, D], not normed
            torch.testing.assert_close(vit.unit_maps(x, [1])[0], vit.model.fc_norm(tokens).mT.unflatten(2, (4, 4)))
    plain = Backbone("vit_tiny_patch16_224", {**kwargs, "global_pool": "token"})
    assert plain.pooled_norm is None and resolve(LinearConfig(protocol="quick"), plain).features == "cls"


def test_bad_combinations_say_what_to_do():
    with pytest.raises(UserError, match=r"moby reads features=cls of blocks=1 \(the paper's head input\); "
                                        r"eval.linear.blocks=2 applies to.*leave them null"):
        resolve(LinearConfig(protocol="moby", blocks=2), encoder("narrow"))
    with pytest.raises(UserError, match=r"mocov3 reads features=cls of blocks=1.*input\); eval.linear.features=both "
                                        "applies to.*leave them null"):
        resolve(LinearConfig(protocol="mocov3", features="both"), encoder("narrow"))
    with pytest.raises(UserError, match=r"input\); eval.linear.blocks=3 applies to"):  # cls is the paper's own
        resolve(LinearConfig(protocol="mocov3", features="cls", blocks=3), encoder("narrow"))
    with pytest.raises(UserError, match="eval.linear.lr=0.1 is the base lr of the mocov3, dino and moby protocols"):
        load_config("fmnist-mocov3-repre", ["eval.linear.lr=0.1"])


def test_a_config_from_before_the_protocols_reads_its_quick_defaults_as_null():
    old = load_config("fmnist-mocov3-repre").to_dict()
    old["eval"]["linear"] = {"features": "cls", "blocks": 1, "epochs": 30, "lrs": [0.01]}  # no "protocol"
    lin = config_from_dict(old).eval.linear
    assert (lin.protocol, lin.features, lin.blocks, lin.epochs, lin.lrs) == ("quick", None, None, None, [0.01])
    old["eval"]["linear"] = {"features": "avg", "blocks": 2, "epochs": 20}  # values someone chose stay
    lin = config_from_dict(old).eval.linear
    assert (lin.features, lin.blocks, lin.epochs) == ("avg", 2, 20)


def test_quick_is_labelled_as_repres_cpu_protocol(tiny_run):
    out, _ = tiny_run
    code, stdout = run_cli(["eval", "linear", "--checkpoint", str(out), "--out", str(out / "eval" / "quick"),
                            "--set", "eval.linear.epochs=2", "--set", "eval.linear.lrs=[0.01]",
                            "--set", "eval.linear.wds=[0.0]"])
    result = last_json(stdout)
    extra = result["extra"]
    assert code == 0 and extra["protocol"] == "quick" and "quick CPU protocol (not a paper's)" in extra["reference"]
    # each class's top-1, and the confusion matrix its queries fill: the overall top-1 is their diagonal
    confusion = torch.tensor(extra["confusion"])
    assert len(extra["per_class_top1"]) == len(confusion) and "per class (top-1):" in stdout
    assert result["value"] == pytest.approx(float(confusion.diag().sum() / confusion.sum()))


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("protocol", ["dino", "moby"])
def test_an_interrupted_probe_resumes_to_the_uninterrupted_head(tiny_run, tmp_path, monkeypatch, protocol):
    """Stopped after its first epoch of 3 and run again into the same folder: the same head (bitwise), top-1 and
    last train loss (MoBY's too: each epoch's stochastic depth is drawn from its own seed); run once more, after
    its last epoch, it trains nothing and reports the same."""
    run, _ = tiny_run
    overrides = EXACT + [f"eval.linear.protocol={protocol}", "eval.linear.epochs=3", "eval.linear.lr=0.5"]
    whole = evaluate("linear", run, overrides, tmp_path / "whole")
    save = lincls_module.save

    def save_then_stop(path, head, opt, key, epoch, loss, cfg):
        save(path, head, opt, key, epoch, loss, cfg)
        if epoch == 1:
            raise Interrupted

    monkeypatch.setattr(lincls_module, "save", save_then_stop)
    with pytest.raises(Interrupted):
        evaluate("linear", run, overrides, tmp_path / "broken")
    monkeypatch.setattr(lincls_module, "save", save)
    assert ckpt_io.load(tmp_path / "broken" / "linear-probe.pt")["epoch"] == 1
    epochs, train_epoch = [], lincls_module.train_epoch

    def counted(*args, **kwargs):
        epochs.append(1)
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(lincls_module, "train_epoch", counted)  # a probe started again would reach the same head
    resumed = evaluate("linear", run, overrides, tmp_path / "broken")
    assert len(epochs) == 2
    assert resumed["value"] == whole["value"]
    assert resumed["extra"]["final_train_loss"] == whole["extra"]["final_train_loss"]
    a, b = (ckpt_io.load(tmp_path / d / "linear-probe.pt") for d in ("whole", "broken"))
    assert a["epoch"] == b["epoch"] == 3 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    done = evaluate("linear", run, overrides, tmp_path / "broken")  # after its last epoch: tested again, as it was
    assert len(epochs) == 2  # no epoch trained
    assert done["value"] == whole["value"] and done["extra"]["final_train_loss"] == whole["extra"]["final_train_loss"]
    with pytest.raises(UserError, match="other settings or of another encoder .differing: base_lr"):
        evaluate("linear", run, [*overrides, "eval.linear.lr=0.1"], tmp_path / "broken")
    with pytest.raises(UserError, match="differing: images, seed, split"):  # other images, crops and head
        evaluate("linear", run, [*overrides, "train.seed=1", "eval.split=val", "eval.val_size=16"], tmp_path / "broken")
    if protocol == "dino":  # a probe written before the protocols' later fields: their defaults, so it goes on
        state = ckpt_io.load(tmp_path / "broken" / "linear-probe.pt")
        assert "test_resize" not in state["probe"]  # how it scores is no setting of the head it trains
        for field in ("nesterov", "warmup_epochs", "warmup_lr", "min_lr", "lr_per_step", "label_smoothing",
                      "clip_grad", "drop_path", "data", "split", "images", "image_size", "seed", "precision"):
            del state["probe"][field]
        ckpt_io.save(state, tmp_path / "broken" / "linear-probe.pt")
        assert evaluate("linear", run, overrides, tmp_path / "broken")["value"] == whole["value"]


def lincls_cmd(run: Path, out: Path, procs: int, extra: tuple[str, ...] = ()) -> list[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    cmd = [*launch, "-m", "repre", "eval", "linear", "--checkpoint", str(run), "--out", str(out)]
    for item in [*EXACT, "eval.linear.protocol=mocov3", *extra]:
        cmd += ["--set", item]
    return cmd


# 64 train and 32 test images of 10 classes; each read of a train image is written to data.root/reads.txt as
# "RANK INDEX", in the order read
READS_OWN_IMAGES = '''
import os

import numpy as np


class Images:
    classes = [str(c) for c in range(10)]

    def __init__(self, split, root):
        self.split, self.root = split, root

    def __len__(self):
        return 64 if self.split == "train" else 32

    def __getitem__(self, i):
        if self.split == "train":
            with open(os.path.join(self.root, "reads.txt"), "a") as f:
                f.write(f"{os.environ.get('RANK', '0')} {i}\\n")
        pixels = np.random.default_rng(i + (0 if self.split == "train" else 1000)).integers(0, 256, (16, 16, 3))
        return pixels.astype(np.uint8), i % 10


def images(split, root):
    return Images(split, root)
'''


def train_reads(root: Path) -> dict[int, list[int]]:
    """The train images each rank read, in order (data.root/reads.txt of READS_OWN_IMAGES)."""
    reads: dict[int, list[int]] = {}
    for line in (root / "reads.txt").read_text().splitlines():
        rank, index = map(int, line.split())
        reads.setdefault(rank, []).append(index)
    return reads


def test_two_processes_train_the_head_one_process_trains(tiny_run, tmp_path, monkeypatch):
    """Each process its half of every global batch of 16, the head's gradients averaged (gloo on the CPU): in each
    epoch the two processes read disjoint halves of the 64 train images, and the head is the one process's."""
    run, _ = tiny_run
    (tmp_path / "reads_own_images.py").write_text(READS_OWN_IMAGES)
    monkeypatch.syspath_prepend(str(tmp_path))
    for d in ("1", "2"):
        (tmp_path / d).mkdir()
    own = ("data.name=python", "data.source=reads_own_images:images")
    one = evaluate("linear", run, [*EXACT, "eval.linear.protocol=mocov3", *own, f"data.root={tmp_path / '1'}"],
                   tmp_path / "1")  # in this process
    done = subprocess.run(lincls_cmd(run, tmp_path / "2", 2, (*own, f"data.root={tmp_path / '2'}")), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"task"') == 1  # rank 0 alone prints the result
    two = json.loads(done.stdout.strip().splitlines()[-1])
    assert (one["extra"]["processes"], two["extra"]["processes"]) == (1, 2)
    # the first read of each process is the source's check of its first image; then 2 epochs of 4 steps, each
    # step 8 images of a process: the halves of each epoch disjoint, together every train image once
    alone, reads = train_reads(tmp_path / "1"), train_reads(tmp_path / "2")
    assert sorted(reads) == [0, 1] and [len(reads[0]), len(reads[1]), len(alone[0])] == [1 + 2 * 32] * 2 + [1 + 2 * 64]
    for epoch in range(2):
        halves = [reads[rank][1 + 32 * epoch:1 + 32 * (epoch + 1)] for rank in (0, 1)]
        assert not set(halves[0]) & set(halves[1]) and sorted(halves[0] + halves[1]) == list(range(64))
        for step in range(4):  # each global batch: one process's batch, halved
            batch = alone[0][1 + 64 * epoch + 16 * step:1 + 64 * epoch + 16 * (step + 1)]
            assert sorted(halves[0][8 * step:8 * (step + 1)] + halves[1][8 * step:8 * (step + 1)]) == sorted(batch)
    assert two["value"] == one["value"] and two["extra"]["test_images"] == one["extra"]["test_images"] == 32
    # each class's top-1 from the counts of both processes: the same matrix as one process's, its trace the top-1
    assert two["extra"]["confusion"] == one["extra"]["confusion"] and len(one["extra"]["per_class_top1"]) == 10
    assert sum(map(sum, one["extra"]["confusion"])) == 32
    assert sum(row[c] for c, row in enumerate(one["extra"]["confusion"])) / 32 == one["value"]
    assert two["extra"]["final_train_loss"] == pytest.approx(one["extra"]["final_train_loss"], rel=1e-5)
    a, b = (ckpt_io.load(tmp_path / d / "linear-probe.pt")["model"] for d in ("1", "2"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_stochastic_depth_is_added_as_timm_builds_it_to_an_encoder_of_one_s_own(kind):
    """MoBY's probe trains through drop path 0.2: the copy has timm's modules for `drop_path_rate` (rising over
    the blocks, a Swin's across its stages) and the encoder's weights, for an encoder wrapped from a model of
    one's own too (its Backbone kwargs empty: a rebuild from them was timm's default model, which its weights
    did not fit)."""
    import timm
    from timm.layers import DropPath

    kwargs = (dict(img_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2) if kind == "vit" else
              dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 2), num_heads=(1, 2)))
    arch = "vit_tiny_patch16_224" if kind == "vit" else "swin_tiny_patch4_window7_224"

    def rates(model):
        return [(name, m.drop_prob if isinstance(m, DropPath) else 0.0) for name, m in model.named_modules()
                if name.rsplit(".", 1)[-1].startswith("drop_path")]

    own = Backbone.from_model(timm.create_model(arch, num_classes=0, **kwargs))  # timm's Swin: drop path 0.1
    before = rates(own.model)
    copied = lincls_module.with_drop_path(own, 0.2)
    built = timm.create_model(arch, num_classes=0, drop_path_rate=0.2, **kwargs)
    assert rates(copied.model) == rates(built) and max(r for _, r in rates(built)) == pytest.approx(0.2)
    assert all(torch.equal(a, b) for a, b in zip(copied.state_dict().values(), own.state_dict().values(),
                                                  strict=True))
    assert rates(own.model) == before  # the encoder itself unchanged


def test_an_encoder_whose_blocks_hold_no_class_token_is_read_by_its_patch_tokens():
    """CaiT's class token joins after the blocks the probe reads (timm's forward_intermediates takes no
    return_prefix_tokens there): every protocol's default reads the mean patch token; the class token asked for
    is refused in words (a TypeError before)."""
    encoder = Backbone("cait_xxs24_224", dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                                              depth_token_only=1)).eval()
    x = torch.randn(2, 3, 16, 16)
    for name in ("quick", "mocov3", "dino"):
        protocol = resolve(LinearConfig(protocol=name), encoder)
        assert (protocol.features, protocol.blocks) == ("avg", 1)
    with torch.no_grad():
        feats = token_features(encoder, x, "avg", 2)
        blocks = encoder.model.forward_intermediates(x, indices=2, norm=True, output_fmt="NLC",
                                                     intermediates_only=True)
    torch.testing.assert_close(feats, torch.cat([b.mean(dim=1) for b in blocks], dim=1))
    with pytest.raises(UserError, match="blocks hold no class token .* use eval.linear.features=avg"):
        resolve(LinearConfig(protocol="quick", features="cls"), encoder)
