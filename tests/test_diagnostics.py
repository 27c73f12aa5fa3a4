import io
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY
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


def test_loss_balance_under_fp16_takes_the_loss_scale():
    """A loss averaged over a batch's pixels sends each fp16 output a gradient below fp16's smallest normal
    number: measured unscaled its norm is off (or 0 over more pixels); with the step's loss scale it is
    fp32's."""
    torch.manual_seed(0)
    enc, dec = torch.nn.Linear(8, 8), torch.nn.Linear(8, 3 * 64 * 64)
    x, target = torch.randn(128, 8), torch.randn(128, 3 * 64 * 64)

    def balance(dtype: torch.dtype, scale: float) -> dict[str, float]:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            y = enc(x)
            pixels = dec(y)
        recon = (pixels.float() - target).abs().mean()
        return {k: float(v) for k, v in loss_balance(enc, y.float().square().mean(), recon, scale).items()}

    exact = balance(torch.float32, 1.0)
    assert balance(torch.float16, 1.0)["diag_grad_norm_recon"] != pytest.approx(exact["diag_grad_norm_recon"], rel=0.02)
    scaled = balance(torch.float16, 2.0**16)
    for key, value in exact.items():
        assert scaled[key] == pytest.approx(value, rel=0.01), key


def test_the_loss_balance_callback_measures_at_the_step_s_loss_scale(tmp_path, monkeypatch):
    """An fp16 run's diagnostics take the scale its step's backward takes (GradScaler's 65536 at first); bf16's
    and fp32's are 1."""
    from repre.engine import callbacks
    from repre.engine.trainer import Trainer

    scales, measure = [], callbacks.loss_balance
    monkeypatch.setattr(callbacks, "loss_balance", lambda *args: scales.append(float(args[3])) or measure(*args))
    for precision in ("fp16", "fp32"):
        cfg = load_config("fmnist-mocov3-repre", [*TINY, f"train.precision={precision}", "train.max_steps=1",
                                                   "train.diagnose_every=1", "eval.knn.enabled=false"])
        Trainer(cfg, tmp_path / precision).fit()
    assert scales == [2.0**16, 1.0]


def test_a_non_finite_diagnostic_is_written_as_json_null(tmp_path):
    """A diagnosed step whose gradients are NaN: metrics.jsonl stays JSON (null; NaN is no JSON) and
    TensorBoard gets no point."""
    import json

    from repre.engine.metrics import MetricWriter

    writer = MetricWriter(tmp_path, tensorboard=False)
    writer.write({"step": 4, "kind": "train", "loss": 1.5, "diag_grad_cosine": float("nan"), "x": float("inf")})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"step": 4, "kind": "train", "loss": 1.5, "diag_grad_cosine": None, "x": None}


def test_trend_watch_warns_once_when_losses_diverge():
    watch = TrendWatch(window=2, tol=0.02)
    assert watch.update(4.0, 1.0) is None and watch.update(4.0, 1.0) is None and watch.update(3.8, 1.1) is None
    message = watch.update(3.7, 1.2)
    assert message and "reconstruction loss rose" in message
    assert watch.update(3.6, 1.3) is None  # once per direction


def test_loss_trend_goes_on_from_its_checkpointed_state():
    """Interrupted after three lines and resumed from its state, the watch warns at the sixth line, as the
    uninterrupted one does; resumed again after its warning, it does not warn a second time."""
    before, after, later = LossTrend(), LossTrend(), LossTrend()  # each compares the last 3 lines with 3 before
    for _ in range(3):
        before.on_log(None, {"loss_contrastive": 4.0, "loss_recon": 1.0})
    after.load_state_dict(ckpt_round_trip(before.state_dict()))
    for i in range(3):
        after.on_log(None, {"loss_contrastive": 3.8 - 0.1 * i, "loss_recon": 1.1 + 0.1 * i})
        assert after.trend.warned == ({"reconstruction"} if i == 2 else set())
    later.load_state_dict(ckpt_round_trip(after.state_dict()))
    for i in range(6):  # still diverging: no second warning; the history keeps only what it compares
        assert later.trend.update(3.5 - 0.1 * i, 1.4 + 0.1 * i) is None
    assert len(later.state_dict()["history"]) == 6


def ckpt_round_trip(state: dict) -> dict:
    """`state` as a checkpoint gives it back (torch.save, then weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


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


def watch_lines(log, lines: list[float], every: int = 10, total: int = 1600, out_dim: int | None = 1024) -> list[str]:
    """The warnings (`log`: the repre_log fixture) of a watch fed one train line every `every` steps, then the
    run's end: each value is DINO's teacher entropy (K = 1024: its line is 6.585 nats) or, with
    `out_dim=None`, MoCo v3's embedding_std."""
    log.clear()
    watch = CollapseWatch(out_dim, every)
    trainer = SimpleNamespace(state=SimpleNamespace(step=0), total=total)
    key = "teacher_entropy" if out_dim else "embedding_std"
    for i, value in enumerate(lines, start=1):
        trainer.state.step = i * every
        watch.on_log(trainer, {"embedding_std": 0.6, key: value})
    watch.on_fit_end(trainer, None, True)
    return [r.getMessage() for r in log.records if r.levelno == logging.WARNING]


def test_collapse_watch_warns_when_one_prototype_takes_the_teachers_outputs(repre_log):
    """DINO's other collapse (its section 5.3): the batch's sharp teacher outputs all on one prototype (a
    teacher temperature far below DINO's, without centering: docs/results.md), where the entropy line, which
    looks for uniform outputs, said nothing."""
    def warnings(spread: list[float], batch_size: int = 32, prototypes: int = 1024) -> list[str]:
        repre_log.clear()
        watch = CollapseWatch(prototypes, 10, batch_size=batch_size)
        trainer = SimpleNamespace(state=SimpleNamespace(step=0), total=10 * len(spread))
        for i, value in enumerate(spread, start=1):
            trainer.state.step = i * 10
            watch.on_log(trainer, {"embedding_std": 0.4, "teacher_entropy": 0.01, "teacher_batch_entropy": value})
        watch.on_fit_end(trainer, None, True)
        return [r.getMessage() for r in repre_log.records if r.levelno == logging.WARNING]

    (warning,) = warnings([1.6, 1.2] + [0.5] * 58)
    assert warning.startswith("step 90: teacher_batch_entropy 0.50: the batch's teacher outputs on about 1.6 of "
                              "1024 prototypes (one dominates)")
    assert warnings([1.6, 1.2] + [3.0] * 58) == []  # spread over 20 of a batch of 32 images' outputs
    assert warnings([0.5] * 60, batch_size=4) == []  # 4 images: their crops on 2 or 3 prototypes when healthy
    assert len(warnings([0.5] * 60, batch_size=8)) == 1  # from 8 images on
    assert warnings([0.69] * 60, prototypes=2) == []  # 2 prototypes balanced are at the line itself
    assert len(warnings([0.5] * 60, prototypes=4)) == 1


def test_collapse_watch_ignores_one_line_over_the_line(repre_log):
    # the DINO preset on validation seed 1 (steps 160-260): one 10-step window at 6.60, then trains on
    healthy = [6.0] * 15 + [6.25, 6.45, 6.50, 6.55, 6.60, 6.57, 6.54, 6.58, 6.51, 6.53] + [6.3] * 135
    assert watch_lines(repre_log, healthy) == []
    assert watch_lines(repre_log, [6.0] * 20 + [6.6, 6.4] * 70) == []  # every other line: half the window
    assert watch_lines(repre_log, [6.9, 6.0], total=20) == []  # a short run: one line of two


def test_collapse_watch_warns_once_when_the_teacher_stays_uniform(repre_log):
    # a sharper teacher's run (validation seed 1): near 6.93 from step 270 on; the window: 8 lines (80 steps)
    collapsed = [6.0] * 26 + [6.9] * 134
    (warning,) = watch_lines(repre_log, collapsed)
    assert warning.startswith("step 330: teacher_entropy 6.90 of at most 6.93") and "7 of the last 8" in warning
    # with a dip now and then (a teacher hovering around the line): still 80% of the window
    (warning,) = watch_lines(repre_log, [6.0] * 26 + ([6.9] * 4 + [6.5]) * 26)
    assert "of the last 8" in warning
    # a collapse in the run's last lines, too few for the window
    (warning,) = watch_lines(repre_log, [6.0] * 155 + [6.9] * 5)
    assert warning.startswith("step 1600") and "last 5 train lines" in warning
    assert len(watch_lines(repre_log, [6.9] * 2, total=20)) == 1  # a short run: two lines


def test_collapse_watch_warns_when_embeddings_collapse(repre_log):
    assert watch_lines(repre_log, [0.5] * 160, out_dim=None) == []
    (warning,) = watch_lines(repre_log, [0.5] * 100 + [0.01] * 60, out_dim=None)
    assert warning.startswith("step 1070: embedding_std 0.010")  # 7 of 8 lines
