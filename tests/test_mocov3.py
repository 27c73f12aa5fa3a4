import copy
import math

import pytest
import torch
from torch import nn

from conftest import tiny_config
from repre.builder import build_model
from repre.config import load_config
from repre.core.schedules import RunSchedules, momentum_schedule, warmup_cosine
from repre.data.pipeline import pretrain_loader
from repre.data.splits import train_source
from repre.losses import mocov3_loss
from repre.methods.mocov3 import MoCoV3
from repre.models.heads import mlp
from repre.reconstruction import Baseline, RePre


def official_ctr_loss(q, k, T, rank, N):
    """MoCo v3's contrastive_loss, written out from the official ViT code's formula."""
    q = nn.functional.normalize(q, dim=1)
    k = nn.functional.normalize(k, dim=1)
    logits = torch.einsum("nc,mc->nm", [q, k]) / T
    labels = torch.arange(N, dtype=torch.long) + N * rank
    return nn.CrossEntropyLoss()(logits, labels) * (2 * T)


@pytest.mark.parametrize("rank,world", [(0, 1), (1, 3)])
def test_loss_matches_the_official_formula(rank, world):
    torch.manual_seed(0)
    n = 8
    q, k = torch.randn(n, 16, dtype=torch.float64), torch.randn(n * world, 16, dtype=torch.float64)
    ours = mocov3_loss(q, k, 0.2, offset=rank * n)  # in float64, as given (it was float32)
    torch.testing.assert_close(ours, official_ctr_loss(q, k, 0.2, rank, n), rtol=1e-14, atol=0)
    torch.testing.assert_close(mocov3_loss(q.float(), k.float(), 0.2, offset=rank * n), ours.float())


def test_mlp_is_the_official_builder():
    proj = mlp(3, 32, 64, 16)
    kinds = [type(m).__name__ for m in proj]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert all(m.bias is None for m in proj if isinstance(m, nn.Linear))
    assert proj[-1].affine is False and proj[1].affine is True
    pred = mlp(2, 16, 64, 16)
    assert isinstance(pred[-1], nn.BatchNorm1d) and not pred[-1].affine  # the ViT predictor ends with BN


def test_schedules():
    lr = warmup_cosine(1.0, 0.0, 100, 10)
    assert lr[0] == 0 and lr[5] == pytest.approx(0.5) and lr[10] == pytest.approx(1.0)
    assert lr[55] == pytest.approx(0.5) and lr[-1] == pytest.approx(0.5 * (1 + math.cos(89 / 90 * math.pi)))
    assert (lr[10:].diff() <= 0).all()
    warm = warmup_cosine(1.0, 0.0, 100, 10, start=0.1)
    assert warm[0] == pytest.approx(0.1) and warm[5] == pytest.approx(0.55) and warm[10] == pytest.approx(1.0)
    m = momentum_schedule(0.99, 100)
    assert m[0] == pytest.approx(0.99) and m[50] == pytest.approx(0.995) and 0.99999 < m[-1] <= 1.0


def test_warmup_from_a_start_lr_equals_timms_scheduler_as_moby_builds_it():
    """MoBY's schedule (Transformer-SSL lr_scheduler.py:20-29: timm's CosineLRScheduler, warmup_lr_init,
    per-iteration): the same values with `whole_run` (train.cosine_span=whole_run), timm's cosine over the whole
    run (warmup_prefix False). MoCo v3's and DINO's cosine runs over the steps after the warm-up: with a 5-of-300
    warm-up the two differ by at most 1.5% of the base lr."""
    from timm.scheduler.cosine_lr import CosineLRScheduler

    total, warmup, base, start, final = 300, 5, 1e-3, 1e-6, 1e-5
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    timm_sched = CosineLRScheduler(opt, t_initial=total, lr_min=final, warmup_lr_init=start, warmup_t=warmup,
                                   cycle_limit=1, t_in_epochs=False)
    theirs = torch.tensor([timm_sched._get_lr(t)[0] for t in range(total)], dtype=torch.float64)
    ours = warmup_cosine(base, final, total, warmup, start)
    torch.testing.assert_close(ours[:warmup], theirs[:warmup], rtol=1e-12, atol=0)
    assert float(ours[-1]) == pytest.approx(float(theirs[-1]), rel=1e-3)
    assert float((ours - theirs).abs().max()) < 0.016 * base  # 1.51% of base, mid-run
    torch.testing.assert_close(warmup_cosine(base, final, total, warmup, start, whole_run=True), theirs,
                               rtol=1e-12, atol=0)
    cfg = load_config("in1k-swin-t-moby-repre", [f"train.lr={base * 256 / 512}", f"train.min_lr={final}",
                                                 f"train.warmup_lr={start}", f"train.warmup_fraction={warmup / total}"])
    assert cfg.train.cosine_span == "whole_run"  # the preset's, reaching the run's schedule
    torch.testing.assert_close(RunSchedules.build(cfg, total).lr, theirs, rtol=1e-12, atol=0)


def test_momentum_encoder_is_updated_before_the_key_forward():
    torch.manual_seed(0)
    model = build_model(tiny_config("recon.enabled=false"))
    method: MoCoV3 = model.method
    with torch.no_grad():  # make online and momentum differ
        for p in method.encoder.parameters():
            p.add_(0.1)
    old = copy.deepcopy(method.momentum_encoder.state_dict())
    online = copy.deepcopy(method.encoder.state_dict())
    seen = {}
    def record(mod, _):
        seen["w"] = mod.model.patch_embed.proj.weight.clone()

    method.momentum_encoder.register_forward_pre_hook(record)
    model(torch.randn(16, 2, 3, 16, 16), momentum=0.9)
    key = "model.patch_embed.proj.weight"
    expected = old[key] * 0.9 + online[key] * 0.1
    torch.testing.assert_close(seen["w"], expected)
    torch.testing.assert_close(method.momentum_encoder.state_dict()[key], expected)


def test_momentum_targets_are_frozen_and_predictor_is_not_averaged():
    model = build_model(tiny_config())
    method = model.method
    assert not any(p.requires_grad for p in method.momentum_encoder.parameters())
    assert not any(p.requires_grad for p in method.momentum_projector.parameters())
    trainable = {id(p) for g in model.param_groups(0.1) for p in g["params"]}
    assert all(id(p) in trainable for p in method.predictor.parameters())
    assert not any(id(p) in trainable for p in method.momentum_encoder.parameters())


def test_the_presets_vit_recipe_freezes_the_projection_and_timm_s_trains_it():
    """The default preset: MoCo v3's ViT recipe (a fixed sin-cos table, the patch projection frozen); with
    timm's initialization and freeze_patch_embed=false both train, each step changing them."""
    for overrides, trained in (((), False), (("model.init=timm", "method.mocov3.freeze_patch_embed=false"), True)):
        model = build_model(tiny_config(*overrides))
        vit = model.method.encoder.model
        params = [vit.pos_embed, *vit.patch_embed.proj.parameters()]
        assert all(p.requires_grad == trained for p in params)
        before = [p.detach().clone() for p in params]
        opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-2)
        model(torch.randn(4, 2, 3, 16, 16), 0.99)["loss"].backward()
        opt.step()
        assert all(torch.equal(a, b) != trained for a, b in zip(before, params, strict=True))


def test_weight_decay_on_all_parameters():
    groups = build_model(tiny_config()).param_groups(0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1


def test_disabled_branch_is_plain_mocov3():
    torch.manual_seed(0)
    plain = build_model(tiny_config("recon.enabled=false"))
    torch.manual_seed(0)
    repre = build_model(tiny_config())
    assert isinstance(plain, Baseline) and isinstance(repre, RePre) and not isinstance(repre, Baseline)
    assert not any("decoder" in n for n, _ in plain.named_parameters())
    assert any("decoder" in n for n, _ in repre.named_parameters())
    views = torch.randn(16, 2, 3, 16, 16)
    a, b = plain(views, 0.99), repre(views, 0.99)
    torch.testing.assert_close(a["loss"], b["loss_contrastive"])
    assert a["loss_recon"] == 0
    torch.testing.assert_close(b["loss"], b["loss_contrastive"] + b["loss_recon"])


def test_fixed_batch_overfits():
    """One fixed batch of generated images: the reconstruction loss falls by more than half in 50 steps (raw
    pixels: per-patch normalized targets of generated noise images are mostly noise)."""
    torch.manual_seed(0)
    cfg = tiny_config("recon.width=32", "recon.norm_pix=false")
    model = build_model(cfg)
    views = next(iter(pretrain_loader(cfg, train_source(cfg), 0, False)))["views"]
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=5e-3)
    first = None
    for _ in range(50):
        out = model(views, 0.99)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first or (out["loss_recon"].item(), out["loss_contrastive"].item())
    assert out["loss_recon"].item() < 0.5 * first[0]
    assert out["loss_contrastive"].item() < first[1]


def test_freeze_patch_embed_reaches_the_model():
    """method.mocov3.freeze_patch_embed (the in1k presets' --stop-grad-conv1): frozen, and in no group."""
    model = build_model(tiny_config("method.mocov3.freeze_patch_embed=true"))
    frozen = list(model.method.encoder.model.patch_embed.parameters())
    assert frozen and not any(p.requires_grad for p in frozen)
    trained = {id(p) for g in model.param_groups(0.1) for p in g["params"]}
    assert not any(id(p) in trained for p in frozen)


def test_each_views_query_meets_the_other_views_key():
    """The symmetrized loss, written out as the official forward: ctr(q1, k2) + ctr(q2, k1)."""
    from repre.methods.base import stack_views

    torch.manual_seed(0)
    model = build_model(tiny_config("recon.enabled=false", "model.drop_path=0.0"))
    m = model.method
    views = torch.randn(8, 2, 3, 16, 16)
    out = model(views, 1.0)  # momentum 1: the momentum encoder stays as built
    b, x = 8, stack_views(views)
    pooled, _ = m.encoder(x)
    q1, q2 = m.predictor(m.projector(pooled[:b])), m.predictor(m.projector(pooled[b:]))
    with torch.no_grad():
        keys, _ = m.momentum_encoder(x)
        k1, k2 = m.momentum_projector(keys[:b]), m.momentum_projector(keys[b:])
    expected = mocov3_loss(q1, k2, m.temperature) + mocov3_loss(q2, k1, m.temperature)
    torch.testing.assert_close(out["loss"], expected)
