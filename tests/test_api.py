"""The Python API as a library user calls it: what its entry points take and refuse, what they leave behind,
and what they give back."""

from __future__ import annotations

import math
import pickle
import typing

import pytest
import timm.data
import torch

import repre
from conftest import LOCAL_AUG, tiny_config
from repre.branch import ReconstructionBranch
from repre.builder import build_model
from repre.config import ReconConfig, load_config
from repre.errors import StoppedEarly, UserError
from repre.losses import dino_loss, reconstruction_loss
from repre.methods import FRAMEWORK_CLASSES
from repre.models.decoder import UPSAMPLE, Decoder


def test_overrides_are_a_list_or_a_mapping_and_one_string_is_refused():
    """One string would be read letter by letter ("--set expects key=value, got 'e'"); a mapping takes dotted
    keys as `--set` does and sections as YAML does, and stays the caller's as it was."""
    assert load_config(None, ("train.max_steps=12",)).train.max_steps == 12
    assert load_config(None, (item for item in ["train.max_steps=13"])).train.max_steps == 13  # read once
    given = {"train": {"lr": 0.5}, "train.max_steps": 10}
    cfg = load_config(None, given)
    assert (cfg.train.max_steps, cfg.train.lr) == (10, 0.5) and given == {"train": {"lr": 0.5}, "train.max_steps": 10}
    assert load_config(None, {"train": {"max_steps": 11}}).train.max_steps == 11
    assert load_config("fmnist-mocov3-repre", {"model.kwargs": {}}).model.kwargs == {}  # a mapping: replaced
    for bad in ("train.max_steps=3", [3]):
        with pytest.raises(TypeError, match=r"'key=value' strings in a list"):
            load_config(None, bad)
    with pytest.raises(TypeError, match=r"'key=value' strings in a list"):
        repre.evaluate("knn", "no-such-run", "eval.knn.k=5")  # before the checkpoint is looked for


def test_pretrain_checks_a_config_changed_in_python_and_puts_the_callers_rng_back(tmp_path):
    with pytest.raises(TypeError, match="pretrain takes a Config"):
        repre.pretrain("fmnist-mocov3-repre", tmp_path / "a")
    cfg = tiny_config("train.max_steps=2", "eval.knn.enabled=false", "eval.recon.images=2")
    cfg.train.max_steps = "2"
    with pytest.raises(UserError, match="train.max_steps must be int"):
        repre.pretrain(cfg, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    cfg.train.max_steps = 2
    cfg.data.root = tmp_path  # a Path set from Python counts as the string it names (synthetic data: unread)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    summary = repre.pretrain(cfg, tmp_path / "a")
    assert summary["completed"] and torch.equal(torch.rand(3), expected)  # the run's seeding stayed inside


def test_load_encoder_gives_an_encoder_ready_to_embed(tiny_run):
    """In eval mode, and timm's data config from it is the run's evaluation input (not the architecture's 224
    px ImageNet defaults); keys it does not read are refused."""
    run, _ = tiny_run
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    encoder, cfg = repre.load_encoder(run)
    assert torch.equal(torch.get_rng_state(), rng)  # the model's random init, replaced, drew from a copy
    assert not encoder.training
    data = timm.data.resolve_data_config({}, model=encoder.model)
    assert data["input_size"] == (3, cfg.data.image_size, cfg.data.image_size)
    assert data["mean"] == pytest.approx(cfg.data.mean) and data["std"] == pytest.approx(cfg.data.std)
    assert encoder.model.pretrained_cfg["hf_hub_id"] is None  # not timm's hub weights
    momentum, _ = repre.load_encoder(run, encoder="momentum_encoder")
    assert not all(torch.equal(a, b) for a, b in zip(momentum.parameters(), encoder.parameters(), strict=True))
    with pytest.raises(UserError, match="has no 'teacher_encoder'; it has encoder, momentum_encoder"):
        repre.load_encoder(run, encoder="teacher_encoder")
    with pytest.raises(UserError, match="not read by `repre.load_encoder`"):
        repre.load_encoder(run, ["train.lr=0.1"])


def test_an_encoder_loaded_at_another_image_size_has_its_position_embedding_for_that_grid(tiny_run, repre_log):
    """At data.image_size 24 (the run's: 16), the 6 x 6 grid's position embedding (`Backbone.pos_embed_at`:
    MoCo v3's fixed sin-cos computed for it) and every other weight as trained; the whole model too (`recon`)."""
    from repre.eval import evaluate

    run, _ = tiny_run
    own, _ = repre.load_encoder(run)
    bigger, cfg = repre.load_encoder(run, ["data.image_size=24"])
    assert cfg.data.image_size == 24 and "trained at data.image_size=16" in repre_log.text
    torch.testing.assert_close(bigger.model.pos_embed, own.pos_embed_at((6, 6)))
    others = {k: v for k, v in own.state_dict().items() if k != "model.pos_embed"}
    assert all(torch.equal(v, bigger.state_dict()[k]) for k, v in others.items())
    assert bigger(torch.zeros(2, 3, 24, 24))[0].shape == own(torch.zeros(2, 3, 16, 16))[0].shape
    result = evaluate("recon", run, ["data.image_size=24", "eval.recon.subset=4", "eval.recon.images=2"])
    assert math.isfinite(result["value"])


@pytest.mark.parametrize("name", sorted(FRAMEWORK_CLASSES))
def test_a_forward_in_eval_mode_changes_no_state(name):
    """A validation loss (the model in eval mode) leaves the momentum encoder, DINO's center and MoBY's queues as
    they were; in training mode the step updates them."""
    extra = [f"method.name={name}"] + (["data.local_crops=2", *LOCAL_AUG] if name == "dino" else [])
    cfg = tiny_config(*extra)
    model = build_model(cfg)
    size, small = cfg.data.image_size, cfg.data.local_size
    views = torch.randn(4, 2, 3, size, size)
    local = torch.randn(4, 2, 3, small, small) if name == "dino" else None
    with torch.no_grad():
        for p in model.method.encoder.parameters():  # as after an optimizer step: the EMA targets have to move
            p.add_(0.01 * torch.randn_like(p))
        model(views, 0.5, local_views=local)  # a training step: the state moves off its initial values
        model.eval()
        before = {k: v.clone() for k, v in model.method.state_dict().items()}
        model(views, 0.5, local_views=local)
    after = model.method.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    model.train()
    with torch.no_grad():
        model(views, 0.5, local_views=local)
    assert not all(torch.equal(model.method.state_dict()[k], before[k]) for k in before)


def test_the_branch_refuses_what_would_fail_or_broadcast_later():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=0)
    with pytest.raises(ValueError, match="upsample='bicubic': one of bilinear, nearest"):
        ReconstructionBranch(vit, taps=2, upsample="bicubic")
    for width in (0, 2.5):
        with pytest.raises(ValueError, match=f"width={width}: the decoder's channels"):
            Decoder([8], 4, width=width)
    assert typing.get_args(typing.get_type_hints(ReconConfig)["upsample"]) == UPSAMPLE  # one list of modes
    branch = ReconstructionBranch(vit, taps=2, width=8)
    _, maps = branch.encode(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"reconstruction \[2, 3, 32, 32\] and its target \[2, 1, 32, 32\]"):
        branch.loss(maps, torch.randn(2, 1, 32, 32))  # a grey target, which F.l1_loss would broadcast
    assert branch.reconstruct(maps, 32).shape == (2, 3, 32, 32)  # a side: a square
    with pytest.raises(ValueError, match=r"targets of \(64, 64\) pixels for maps of images of \(32, 32\)"):
        branch.loss(maps, torch.randn(2, 3, 64, 64))  # another crop's images: the decoder would stretch to them
    for out_stride in (0, -2, 3, 2.0, True):
        with pytest.raises(UserError, match=f"recon.out_stride={out_stride!r}: a power of two"):
            ReconstructionBranch(vit, taps=2, out_stride=out_stride)
    for taps in (2.0, "4", True, [1, 2.0]):
        with pytest.raises(UserError, match="give a count of blocks"):
            ReconstructionBranch(vit, taps=taps)
    with pytest.raises(ValueError, match="give patch="):
        reconstruction_loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), norm_pix=True)  # patches of what size?
    with pytest.raises(ValueError, match=r"sides \(10, 10\) must be multiples of it"):  # a broadcast error before
        reconstruction_loss(torch.zeros(1, 3, 10, 10), torch.zeros(1, 3, 10, 10), norm_pix=True, patch=4)
    with pytest.raises(ValueError, match=r"1 maps of channels \[192\]: the branch reads 2 maps"):
        branch.loss(maps[:1], torch.randn(2, 3, 32, 32))  # zip() cut it short or an index failed
    with pytest.raises(ValueError, match=r"4 maps of channels"):
        branch.loss(maps + maps, torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="6 student rows for 4 crops of the 2 images"):
        dino_loss(torch.zeros(6, 5), torch.zeros(4, 5), torch.zeros(1, 5), 4, 0.1, 0.04)



def test_a_stopped_run_s_summary_survives_pickling():
    """A torchrun worker's error travels pickled: the summary comes back as the summary, its message as JSON."""
    stop = pickle.loads(pickle.dumps(StoppedEarly({"completed": False, "steps": 3})))
    assert stop.summary == {"completed": False, "steps": 3} and str(stop) == '{"completed": false, "steps": 3}'


def test_evaluate_keeps_its_result_where_repre_eval_does_when_asked(tiny_run, tmp_path, monkeypatch, repre_log):
    """keep=True: the run's eval/TASK/result.json, which `repre compare` and the export card read (and the run's
    TensorBoard); by default the result is only returned. A result that cannot be written after the work (a
    full disk) is returned, and logged."""
    import shutil

    from repre.core.eval_results import run_results

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run, ignore=shutil.ignore_patterns("eval"))
    quick = ["eval.knn.train_subset=32", "eval.knn.test_subset=16"]
    repre.evaluate("knn", run, quick)
    assert run_results(run) == []
    result = repre.evaluate("knn", run, quick, keep=True)
    assert [r["value"] for r in run_results(run, every=True)] == [result["value"]]

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("repre.eval.keep_result", full_disk)
    assert repre.evaluate("knn", run, quick, keep=True)["value"] == result["value"]
    assert "the result is not written" in repre_log.text and '"task": "knn"' in repre_log.text


def test_encoders_and_taps_given_as_a_user_would_are_taken_or_refused_by_name(tmp_path):
    """A bare timm model to a framework is wrapped (it failed inside timm's attention); a count or text as a
    forward's taps, a pooling that gives tokens, a non-module encoder, a config that is no Config or has a
    value out of range: each refused naming what to give. Numpy integers are taps; a branch whose loss was
    compiled pickles (the compiled function is left)."""
    import numpy as np

    from repre.methods import MoCoV3
    from repre.models.backbone import Backbone
    from repre.reconstruction import RePre

    def vit(**extra):
        return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=32, depth=2,
                                 num_heads=2, num_classes=0, **extra)

    model = RePre(MoCoV3(vit(), proj_dim=8, mlp_dim=16, freeze_patch_embed=True), taps=2, width=8)
    assert isinstance(model.method.encoder, Backbone) and model(torch.randn(2, 2, 3, 32, 32), 0.99)["loss"].isfinite()
    encoder = Backbone.from_model(vit())
    for taps in (2, "1", 0):
        with pytest.raises(TypeError, match=f"taps={taps!r}: a list of block"):
            encoder(torch.randn(1, 3, 32, 32), taps)
    assert encoder(torch.randn(1, 3, 32, 32), [np.int64(1)])[1][0].shape == (1, 32, 8, 8)
    assert ReconstructionBranch(vit(), taps=[np.int64(0), np.int64(1)]).taps == [0, 1]
    with pytest.raises(UserError, match="global_pool='' .its tokens, not an embedding"):
        Backbone.from_model(vit(global_pool=""))  # a [B, 65, D] "embedding" failed in the heads' BatchNorm
    with pytest.raises(UserError, match="global_pool='max', which the evaluations do not read"):
        Backbone.from_model(vit(global_pool="max"))  # the probes read the class token, not the max
    sam = timm.create_model("samvit_base_patch16", img_size=32, embed_dim=32, depth=1, num_heads=2, window_size=2,
                            global_attn_indexes=(0,), num_classes=0)
    with pytest.raises(UserError, match="SAM's image encoder"):  # its taps failed in timm's NCHW assertion
        Backbone.from_model(sam)
    for given in (None, "vit_tiny_patch16_224"):
        with pytest.raises(TypeError, match="give a timm ViT or Swin"):
            ReconstructionBranch(given)
    with pytest.raises(TypeError, match="norm_pix='no': True"):  # a text, true to Python
        ReconstructionBranch(vit(), norm_pix="no")
    with pytest.raises(TypeError, match="build_model takes a Config"):
        build_model("fmnist-mocov3-repre")
    cfg = tiny_config()
    cfg.recon.views = 3
    with pytest.raises(UserError, match="recon.views"):  # it blamed the architecture
        build_model(cfg)
    cfg = tiny_config()
    cfg.recon.taps = np.array([1, 3])  # an array set from Python: its list
    assert build_model(cfg).branch.taps == [1, 3]
    branch = ReconstructionBranch(vit(), taps=2, width=8)
    branch.compile_loss()
    torch.save(branch, tmp_path / "branch.pt")
    loaded = torch.load(tmp_path / "branch.pt", weights_only=False)
    assert loaded._compiled_loss is None


def test_a_framework_refuses_views_it_would_pair_wrongly_and_encoders_it_cannot_serve():
    """View-first views (`torch.stack([x1, x2])`: [2, B, ...]) trained images 0 and 1 as one image's views
    without an error; DINO's local crops need an encoder of dynamic image size (timm's assertion said otherwise);
    a padding encoder's maps are of larger images than its targets; an int patch size (XCiT) was a TypeError;
    supervised without a class count names it."""
    from repre.methods import DINO, MoCoV3
    from repre.models.backbone import Backbone
    from repre.reconstruction import RePre

    def vit(**extra):
        return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=32, depth=2,
                                 num_heads=2, num_classes=0, **extra)

    model = RePre(MoCoV3(Backbone.from_model(vit()), proj_dim=8, mlp_dim=16), taps=2, width=8)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    with pytest.raises(ValueError, match=r"views must be \[B, 2, C, H, W\].*got a tensor of shape \[2, 4, 3, 32, 32\]"):
        model(torch.stack([x1, x2]), 0.99)
    assert model(torch.stack([x1, x2], dim=1), 0.99)["loss"].isfinite()
    with pytest.raises(ValueError, match="MoCoV3 takes no local crops"):  # they were left out silently
        model(torch.stack([x1, x2], dim=1), 0.99, local_views=torch.randn(4, 2, 3, 16, 16))
    dino = DINO(Backbone.from_model(vit()), out_dim=16, hidden_dim=16, bottleneck_dim=8)
    with pytest.raises(ValueError, match="build the timm model with dynamic_img_size=True"):
        dino(torch.stack([x1, x2], dim=1), local_views=torch.randn(4, 2, 3, 16, 16))
    dino = DINO(Backbone.from_model(vit(dynamic_img_size=True)), out_dim=16, hidden_dim=16, bottleneck_dim=8)
    assert dino(torch.stack([x1, x2], dim=1), local_views=torch.randn(4, 2, 3, 16, 16)).loss.isfinite()
    with pytest.raises(ValueError, match="dynamic_img_pad=True"):
        ReconstructionBranch(vit(dynamic_img_size=True, dynamic_img_pad=True), taps=2)
    with pytest.raises(ValueError, match=r"drops patch tokens while it trains \(patch_drop_rate > 0\)"):
        ReconstructionBranch(vit(patch_drop_rate=0.25), taps=2)  # the first step failed in unflatten
    with pytest.raises(UserError, match=r"recon.enabled=true\) cannot serve model.arch=vit_tiny_patch16_224 with "
                                        r"model.kwargs .*patch_drop_rate"):
        build_model(tiny_config("model.kwargs={patch_size: 4, embed_dim: 32, depth: 4, num_heads: 2, "
                                "patch_drop_rate: 0.25}"))
    assert build_model(tiny_config("recon.enabled=false", "model.kwargs={patch_size: 4, embed_dim: 32, depth: 4, "
                                   "num_heads: 2, patch_drop_rate: 0.25}"))
    xcit = timm.create_model("xcit_nano_12_p8_224", img_size=32, num_classes=0)
    with pytest.raises(UserError, match="not a timm vision transformer"):
        ReconstructionBranch(xcit, taps=2)
    with pytest.raises(UserError, match=r"build_model\(cfg, num_classes=N\)"):
        build_model(tiny_config("method.name=supervised"))


def test_supervised_refuses_an_unlabelled_image_in_any_batch_read_on_the_host():
    """A label of -1 (an unlabelled image of a dataset of one's own code) is refused, at the first batch and at a
    later one: on the host the check costs nothing; on an accelerator only the first batch is read (a value
    read there waits for the device)."""
    from repre.methods import Supervised
    from repre.models.backbone import Backbone

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                            num_classes=0)
    model = Supervised(Backbone.from_model(vit), num_classes=3)
    views = torch.randn(2, 2, 3, 32, 32)
    assert model(views, torch.tensor([0, 2])).loss.isfinite()
    for labels in (torch.tensor([1, -1]), None):
        with pytest.raises(UserError, match="needs labelled images"):
            model(views, labels)
    fresh = Supervised(Backbone.from_model(vit), num_classes=3)
    # an accelerator's first batch is read (a meta tensor has no values)
    with pytest.raises(RuntimeError, match="meta"):
        fresh.check_labels(torch.tensor([0, 1], device="meta"))
    fresh.check_labels(torch.tensor([0, 1]))
    fresh.check_labels(torch.tensor([0, -1], device="meta"))  # later ones are not: reading waits for the device


def test_a_key_misspelt_on_a_config_in_python_is_refused_naming_the_nearest():
    """It was kept on the object and left out when pretrain checked the config again: the run went on with the
    preset's value, silently."""
    cfg = tiny_config()
    cfg.train.max_steps = 3  # a key: set as ever
    with pytest.raises(AttributeError, match="TrainConfig has no key 'max_step'; did you mean 'max_steps'"):
        cfg.train.max_step = 2
    with pytest.raises(AttributeError, match="ReconConfig has no key 'wieght'; did you mean 'weight'"):
        cfg.recon.wieght = 0.0
    assert cfg.train.max_steps == 3 and not hasattr(cfg.train, "max_step")


# the `repre` command's entry: the iterator held by a reference cycle alone, which the collector finds (its
# objects are frozen out of the collector's reach at exit where no worker is alive)
ENTRY = ("cycle = [kept]\ncycle.append(cycle)\ndel kept\nimport sys\nsys.argv = ['repre', 'presets']\n"
         "from repre.cli import console\nconsole()\n")


@pytest.mark.parametrize("ending", ["", ENTRY], ids=["a-script", "the-repre-command"])
def test_data_workers_kept_alive_to_the_interpreter_s_exit_do_not_hold_it(tmp_path, ending):
    """repre's workers ignore SIGTERM (a scheduler's signal is the main process's to act on), which
    multiprocessing's exit handler sends them before it waits for them: a script whose loader an exception's
    traceback kept (Ctrl-C in `repre.pretrain`) never ended."""
    import subprocess
    import sys

    script = ("from torch.utils.data import DataLoader\n"
              "from repre.data.workers import resolve_workers, worker_started\n"
              "loader = DataLoader(list(range(64)), batch_size=2, num_workers=resolve_workers(1),\n"
              "                    worker_init_fn=worker_started)\n"
              "kept = iter(loader)\n"
              "next(kept)\n") + ending
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_paths_given_from_python_read_a_tilde_as_the_home_folder(tmp_path, monkeypatch):
    from repre.core.checkpoint_io import checkpoint_file
    from repre.core.pictures import picture_path
    from repre.use.store import EmbeddingFiles

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mine.yaml").write_text("_base_: fmnist-mocov3\ntrain:\n  max_steps: 7\n")
    assert load_config("~/mine.yaml").train.max_steps == 7
    assert checkpoint_file("~/run.pt") == tmp_path / "run.pt"
    assert picture_path("~/show.png") == tmp_path / "show.png"
    assert EmbeddingFiles.of("~/emb.npy").npy == tmp_path / "emb.npy"
