"""MoBY on Swin: the loss against lightly's memory-bank NTXentLoss, the ring buffers, Swin taps and decoding."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import SWIN_TINY, TINY, last_json, run_cli, tiny_config
from repre.builder import build_model
from repre.data.pipeline import pretrain_loader
from repre.data.splits import train_source
from repre.losses import moby_loss
from repre.methods.moby import enqueue
from repre.models.backbone import Backbone, resolve_arch
from repre.models.decoder import Decoder


def test_loss_equals_lightly_ntxent_with_a_memory_bank():
    lightly_loss = pytest.importorskip("lightly.loss")
    torch.manual_seed(0)
    q, k = torch.randn(6, 16), torch.randn(6, 16)
    queue = torch.nn.functional.normalize(torch.randn(40, 16), dim=1)
    ref = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(40, 16))
    ref.memory_bank.bank = queue.clone()
    torch.testing.assert_close(moby_loss(q, k, queue, 0.2), ref(q, k))


def test_queue_is_a_ring_buffer():
    queue, ptr = torch.zeros(10, 1), torch.zeros((), dtype=torch.long)
    for step in range(3):  # 4 keys per step: the third write wraps around
        ptr = enqueue(queue, ptr, torch.full((4, 1), float(step + 1)))
    assert int(ptr) == 2
    assert queue[:, 0].tolist() == [3, 3, 1, 1, 2, 2, 2, 2, 3, 3]
    ptr = enqueue(queue, ptr, torch.arange(13.0).view(13, 1))  # more keys than slots: the newest 10 stay
    assert int(ptr) == 5 and sorted(queue[:, 0].tolist()) == list(range(3, 13))
    assert queue[5, 0] == 3 and queue[4, 0] == 12  # written in order from position 5, wrapping


def swin_batch(cfg):
    return next(iter(pretrain_loader(cfg, train_source(cfg), 0, False)))


def test_forward_enqueues_this_batch_target_keys():
    cfg = tiny_config(*SWIN_TINY)  # batch 16 does not divide the queue of 40
    model = build_model(cfg)
    moby = model.method
    batch = swin_batch(cfg)
    for step in range(3):
        before = moby.queue1.clone()
        model(batch["views"], 0.99)
        changed = (moby.queue1 != before).any(dim=1)
        assert int(changed.sum()) == 16
        assert int(moby.queue_ptr) == (16 * (step + 1)) % 40
    torch.testing.assert_close(moby.queue1.norm(dim=1), torch.ones(40))


def test_each_queue_takes_the_target_keys_of_its_own_view():
    """queue1 holds the target's keys of the first views, queue2 of the second (Transformer-SSL models/moby.py:
    _dequeue_and_enqueue(proj_1_ng, proj_2_ng)), at the rows the shared pointer names."""
    from repre.methods.base import stack_views

    cfg = tiny_config(*SWIN_TINY)
    model = build_model(cfg)
    moby, views = model.method, swin_batch(cfg)["views"]
    model(views, 0.99)  # the EMA update first, then the forward and its keys: rows 0..15
    with torch.no_grad():
        pooled, _ = moby.target_encoder(stack_views(views))
        k1, k2 = (F.normalize(moby.target_projector(half).float(), dim=1) for half in pooled.chunk(2))
    torch.testing.assert_close(moby.queue1[:16], k1)
    torch.testing.assert_close(moby.queue2[:16], k2)
    assert not torch.allclose(k1, k2)  # the two views' keys differ: a swap would fail


def test_target_has_no_drop_path_online_rises_linearly_over_every_block():
    """Transformer-SSL's Swin (swin_transformer.py: dpr = linspace(0, drop_path_rate, sum(depths))): the rate
    rises block by block across the stages, not stage by stage; the target encoder has none."""
    model = build_model(tiny_config(*SWIN_TINY, "model.drop_path=0.2",
                                    "model.kwargs={embed_dim: 16, depths: [1, 2, 3], num_heads: [1, 2, 4]}"))

    def rates(encoder: torch.nn.Module) -> list[float]:  # each block's (its two DropPaths share it)
        return [b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0
                for b in encoder.modules() if type(b).__name__ == "SwinTransformerBlock"]

    torch.testing.assert_close(torch.tensor(rates(model.method.encoder)), torch.linspace(0, 0.2, 6))
    assert rates(model.method.target_encoder) == [0.0] * 6


def test_drop_path_zero_means_none_even_where_timm_defaults_to_more():
    """timm's Swin defaults to drop_path_rate 0.1: model.drop_path=0 must still give a deterministic encoder."""
    model = build_model(tiny_config(*SWIN_TINY)).train()
    assert all(m.drop_prob == 0 for m in model.method.encoder.modules() if hasattr(m, "drop_prob"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.method.encoder(x)[0], model.method.encoder(x)[0], rtol=0, atol=0)


def test_weight_decay_as_the_official_groups():
    """Transformer-SSL's set_weight_decay on the MoBY wrapper (optimizer.py:42-45): every trainable parameter
    decays but 1-D ones and biases; the relative position tables decay; the target encoder is not trained."""
    model = build_model(tiny_config(*SWIN_TINY))
    groups = model.param_groups(0.05)
    decayed = {id(p) for p in groups[0]["params"]}
    official = {id(p) for name, p in model.named_parameters()
                if p.requires_grad and not (p.ndim == 1 or name.endswith(".bias"))}
    assert decayed == official and groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert any("relative_position_bias_table" in name and id(p) in decayed for name, p in model.named_parameters())


def test_a_checkpoint_with_other_decay_groups_says_what_to_do(tmp_path):
    """A run written when the position tables skipped weight decay: resuming names --init-from."""
    from repre.core import checkpoint_io
    from repre.engine.trainer import Trainer
    from repre.errors import UserError

    cfg = tiny_config(*SWIN_TINY, "train.max_steps=2", "train.checkpoint_every=2", "eval.knn.enabled=false")
    Trainer(cfg, tmp_path).fit()
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt = checkpoint_io.load(path)
    decay, no_decay = ckpt["optimizer"]["param_groups"]
    no_decay["params"], decay["params"] = no_decay["params"] + decay["params"][-2:], decay["params"][:-2]
    for step in checkpoint_io.step_checkpoints(tmp_path):
        checkpoint_io.save(ckpt, step)
    with pytest.raises(UserError, match="init-from"):
        Trainer(cfg, tmp_path, resume=True)


@pytest.mark.parametrize("arch,size,strides", [
    ("swin_tiny_patch4_window7_224", 224, [4, 8, 16, 32]),
    ("swin_pico_patch2_window4", 32, [2, 4, 8]),
    ("swin_pico_patch4_window4", 64, [4, 8, 16]),
])
def test_swin_taps_and_decoder_output(arch, size, strides):
    name, kwargs = resolve_arch(arch, size, 0.0, {"embed_dim": 16, "num_heads": [1, 2, 4, 8][: len(strides)]})
    enc = Backbone(name, kwargs)
    taps = list(range(enc.num_units))
    assert enc.hierarchical and enc.unit_strides == strides
    with torch.no_grad():
        _, maps = enc(torch.randn(1, 3, size, size), taps)
        assert [m.shape[-1] for m in maps] == [size // s for s in strides]
        assert [m.shape[1] for m in maps] == enc.unit_channels
        dec = Decoder(enc.unit_channels, strides[0], width=16)
        assert dec(maps, (size, size)).shape == (1, 3, size, size)


@pytest.mark.parametrize("recon", ["true", "false"])
def test_moby_runs_through_the_cli(tmp_path, recon):
    args = ["pretrain", "--out", str(tmp_path / "m")]
    for item in TINY + SWIN_TINY + [f"recon.enabled={recon}", "train.max_steps=6", "train.log_every=3"]:
        args += ["--set", item]
    code, stdout = run_cli(args)
    summary = last_json(stdout)
    assert code == 0 and summary["completed"] and math.isfinite(summary["loss"])
    run = tmp_path / "m"
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "recon.png").is_file() == (recon == "true")
    code, stdout = run_cli(["eval", "knn", "--checkpoint", str(run)])
    assert code == 0 and last_json(stdout)["value"] == pytest.approx(summary["knn_top1"])


def test_fixed_batch_overfits():
    """On one batch the loss falls by more than a quarter in 30 steps (it has a floor: the batch's own keys
    enter the queues as negatives; 17.1 -> 11.5 here)."""
    torch.manual_seed(0)
    cfg = tiny_config(*SWIN_TINY, "recon.enabled=false", "method.moby.queue_size=4096")
    model = build_model(cfg)
    batch = swin_batch(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(30):
        out = model(batch["views"], 0.9)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.75 * losses[0], losses


def test_swin_evaluations_linear_finetune_segment_units():
    from repre.eval.finetune import block_offsets, layer_id
    from repre.eval.segment import dense_unit

    name, kwargs = resolve_arch("swin_tiny_patch4_window7_224", 224, 0.0, {"embed_dim": 16, "num_heads": [1, 2, 4, 8]})
    enc = Backbone(name, kwargs)  # Swin-T's stages and blocks, narrow: the layout is what is checked
    offsets = block_offsets(enc.model)  # Swin-T: 2, 2, 6, 2 blocks
    assert offsets == [0, 2, 4, 10, 12]
    assert layer_id("patch_embed.proj.weight", 12, offsets) == 0
    assert layer_id("layers.2.blocks.5.mlp.fc1.weight", 12, offsets) == 4 + 5 + 1
    assert layer_id("layers.1.downsample.reduction.weight", 12, offsets) == 2  # the block before it: SimMIM's
    assert layer_id("norm.weight", 12, offsets) == 13
    assert enc.unit_strides[dense_unit(enc)] == 16  # the stride-16 stage, not the stride-32 one


def test_swin_linear_probe_and_finetune_through_the_cli(tmp_path):
    args = ["pretrain", "--out", str(tmp_path / "s")]
    for item in TINY + SWIN_TINY + ["train.max_steps=4", "eval.knn.enabled=false"]:
        args += ["--set", item]
    assert run_cli(args)[0] == 0
    code, stdout = run_cli(["eval", "linear", "--checkpoint", str(tmp_path / "s"), "--set", "eval.linear.features=avg",
                            "--set", "eval.linear.epochs=2", "--set", "eval.linear.blocks=2"])
    assert code == 0 and 0 <= last_json(stdout)["value"] <= 1
    code, stdout = run_cli(["eval", "finetune", "--checkpoint", str(tmp_path / "s"), "--set", "eval.finetune.steps=2",
                            "--set", "eval.finetune.batch_size=8"])
    assert code == 0 and 0 <= last_json(stdout)["value"] <= 1


def test_non_finite_keys_never_enter_the_queue():
    queue, ptr = torch.zeros(6, 2), torch.zeros((), dtype=torch.long)
    ptr = enqueue(queue, ptr, torch.ones(4, 2), torch.tensor(True))
    ptr = enqueue(queue, ptr, torch.full((4, 2), float("nan")), torch.tensor(False))
    assert int(ptr) == 4 and torch.isfinite(queue).all() and queue[:4].eq(1).all()


def test_each_views_query_meets_the_other_views_key_and_queue():
    """The symmetrized loss, written out as the official forward: ctr(q1, k2, queue2) + ctr(q2, k1, queue1)
    with the queues as they were before the batch's keys enter them."""
    from repre.methods.base import stack_views

    torch.manual_seed(0)
    model = build_model(tiny_config(*SWIN_TINY, "recon.enabled=false", "model.drop_path=0.0"))
    m = model.method
    views = torch.randn(4, 2, 3, 32, 32)
    queue1, queue2 = m.queue1.clone(), m.queue2.clone()
    out = model(views, 1.0)  # momentum 1: the target encoder stays as built
    b, x = 4, stack_views(views)
    pooled, _ = m.encoder(x)
    q1, q2 = m.predictor(m.projector(pooled[:b])), m.predictor(m.projector(pooled[b:]))
    with torch.no_grad():
        keys, _ = m.target_encoder(x)
        k1, k2 = m.target_projector(keys[:b]), m.target_projector(keys[b:])
    expected = moby_loss(q1, k2, queue2, m.temperature) + moby_loss(q2, k1, queue1, m.temperature)
    torch.testing.assert_close(out["loss"], expected)


def test_a_queue_longer_than_the_dataset_is_said_before_the_first_step(tmp_path, repre_log):
    """64 training images against a queue of 256 keys: each image's older keys fill it ~4 times over, so many
    negatives are the positive's own image; the run says so, with a size below the images."""
    from repre.engine.trainer import Trainer

    model = build_model(tiny_config("method.name=moby", "method.moby.queue_size=256"), 10)
    assert model.method.data_notes(1000) == [] and model.method.data_notes(100)[0].endswith("(e.g. 64)")
    cfg = tiny_config("method.name=moby", "method.moby.queue_size=256", "train.max_steps=1", "eval.knn.enabled=false")
    Trainer(cfg, tmp_path / "run").fit()
    assert "method.moby.queue_size=256 keys a view, for 64 training images" in repre_log.text


SWINV2_TINY = [s for s in SWIN_TINY if not s.startswith(("model.arch", "model.kwargs"))] + [
    "model.arch=swinv2_tiny_window8_256",
    "model.kwargs={patch_size: 2, window_size: 4, embed_dim: 16, depths: [1, 1, 1], num_heads: [1, 2, 4]}"]


@pytest.mark.parametrize("method", ["moby", "mocov3"])
def test_swinv2_temperatures_and_position_mlps_never_decay(method):
    """Decay would pull each attention's log-temperature to 0; SwinV2's own groups exempt it and the position-bias
    MLP (timm's no_weight_decay). All else follows the framework's rule."""
    model = build_model(tiny_config(*SWINV2_TINY, f"method.name={method}"))
    groups = model.param_groups(0.05)
    decayed = {id(p) for p in groups[0]["params"]}
    swinv2 = {id(p) for name, p in model.named_parameters() if "logit_scale" in name or "cpb_mlp" in name}
    assert swinv2 and not swinv2 & decayed
    framework = {id(p) for name, p in model.named_parameters() if p.requires_grad and id(p) not in swinv2
                 and (method == "mocov3" or not (p.ndim == 1 or name.endswith(".bias")))}
    assert decayed == framework
    views = torch.randn(4, 2, 3, 32, 32)
    assert torch.isfinite(model(views, 0.99)["loss"])  # the decoder reads its taps


def test_a_size_that_shrinks_a_swin_window_is_said_at_pretraining_and_refused_at_another_size(repre_log):
    """At 24 px the Swin's last stage has 3x3 cells for its 4x4 window: timm shrinks the window to 3, silently;
    pre-training now says so. A checkpoint trained at 32 px built at 16 px (`repre eval/embed/show --set
    data.image_size=16`) has its windows shrunk and failed on a size mismatch of the position tables; the
    windows' own message now names the least size."""
    from repre.builder import build_encoder, check_builds
    from repre.errors import UserError
    from repre.pretrained import _fit_image_size

    check_builds(tiny_config(*SWIN_TINY, "data.image_size=24"), torch.device("cpu"))
    said = [m for m in repre_log.messages if "fewer cells than its window" in m]
    assert len(said) == 1 and "grids [(12, 12), (6, 6), (3, 3)], windows [(4, 4), (4, 4), (4, 4)]" in said[0]
    assert "shrinks its window to [(4, 4), (4, 4), (3, 3)]" in said[0] and "data.image_size=26 or more" in said[0]
    repre_log.clear()
    check_builds(tiny_config(*SWIN_TINY), torch.device("cpu"))  # 32 px: every window fits
    assert "fewer cells" not in repre_log.text

    cfg = tiny_config(*SWIN_TINY, "data.image_size=16")
    trained_at_32 = {"config": {"data": {"image_size": 32}}}
    with pytest.raises(UserError, match=r"at 16x16 px a stage of this Swin has fewer cells than its window .* "
                                        r"evaluate it at 26 px or more"):
        _fit_image_size(build_encoder(cfg), {}, trained_at_32, cfg, "runs/swin")
    cfg = tiny_config(*SWIN_TINY)  # trained at 24 px with a shrunk window: at 32 px it widens again
    with pytest.raises(UserError, match=r"trained at data.image_size=24, where timm shrank the Swin's windows "
                                        r"to \[\(4, 4\), \(4, 4\), \(3, 3\)\]; at 32 px they would be "
                                        r".*evaluate it at 24 px"):
        _fit_image_size(build_encoder(cfg), {}, {"config": {"data": {"image_size": 24}}}, cfg, "runs/swin")
