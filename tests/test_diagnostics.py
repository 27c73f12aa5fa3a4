import math

import pytest
import torch

from repre.builder import build_model
from repre.config import load_config
from repre.engine.callbacks import CollapseWatch, LossTrend, engine_callbacks
from repre.engine.diagnostics import TrendWatch, loss_balance


def test_loss_balance_norms_and_cosine():
    enc = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    y = enc(x).square().mean()
    out = loss_balance(enc, y, -2 * y)
    assert out["diag_grad_cosine"] == pytest.approx(-1.0, abs=1e-5)
    assert out["diag_grad_norm_recon"] == pytest.approx(2 * out["diag_grad_norm_contrastive"].item(), rel=1e-5)
    assert enc.weight.grad is None  # measuring leaves .grad alone


def test_trend_watch_warns_once_when_losses_diverge():
    watch = TrendWatch(window=2, tol=0.02)
    assert watch.update(4.0, 1.0) is None and watch.update(4.0, 1.0) is None and watch.update(3.8, 1.1) is None
    message = watch.update(3.7, 1.2)
    assert message and "reconstruction loss rose" in message
    assert watch.update(3.6, 1.3) is None  # once per direction


def test_trend_watch_quiet_when_both_fall():
    watch = TrendWatch(window=2)
    assert all(watch.update(4.0 - i * 0.1, 1.0 - i * 0.05) is None for i in range(8))


@pytest.mark.parametrize(("preset", "watches_trend"), [("fmnist-mocov3-repre", True), ("fmnist-moby-repre", True),
                                                       ("fmnist-dino-repre", False), ("fmnist-mocov3", False)])
def test_loss_trend_only_where_the_contrastive_loss_level_means_fit(preset, watches_trend):
    # DINO's loss moves with its teacher's entropy; without the branch there is no second loss
    cfg = load_config(preset)
    kinds = {type(c) for c in engine_callbacks(cfg, build_model(cfg, num_classes=10).method)}
    assert (LossTrend in kinds) is watches_trend
    assert CollapseWatch in kinds


@pytest.mark.parametrize(("preset", "prototypes"), [("fmnist-dino", 1024), ("fmnist-mocov3-repre", None)])
def test_collapse_watch_bounds_the_teacher_entropy_by_the_prototypes(preset, prototypes):
    cfg = load_config(preset)
    (watch,) = [c for c in engine_callbacks(cfg, build_model(cfg).method) if isinstance(c, CollapseWatch)]
    assert watch.uniform == (pytest.approx(math.log(prototypes)) if prototypes else math.inf)
