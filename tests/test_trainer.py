import json

import pytest
import torch

from conftest import tiny_config
from repre.core.runtime import setup_runtime
from repre.data.sources import build_source
from repre.engine.optim import clip_or_measure
from repre.pretraining import pretrain


def _params():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    for p in ps:
        p.grad = torch.randn_like(p) * 3
    return ps


def test_measured_norm_equals_torch_clip_norm():
    a, b = _params(), _params()
    expected = torch.nn.utils.clip_grad_norm_(a, float("inf"))
    torch.testing.assert_close(clip_or_measure(b, 0.0), expected)
    for pa, pb in zip(a, b, strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)  # measuring leaves gradients untouched


def test_clipping_bounds_the_norm():
    ps = _params()
    before = clip_or_measure(ps, 0.0)
    returned = clip_or_measure(ps, 1.0)
    torch.testing.assert_close(returned, before)  # the norm before clipping is reported
    torch.testing.assert_close(clip_or_measure(ps, 0.0), torch.tensor(1.0), atol=1e-4, rtol=1e-4)


def test_a_run_with_the_photometric_stage_on_the_device_equals_one_with_it_in_the_workers(tmp_path, loader_batches):
    """data.device_stages=photometric: the loader's batches hold uint8 views and their photometric draws (the
    stage ran on the device), and the run's losses are those of the run that does it all in the workers."""
    from conftest import tiny_config
    from repre.engine.trainer import Trainer

    def losses(where: str) -> list[float]:
        cfg = tiny_config(f"data.device_stages={where}", "train.log_every=1", "train.max_steps=3",
                          "eval.knn.enabled=false", "train.precision=fp32")
        Trainer(cfg, tmp_path / where).fit()
        return [json.loads(line)["loss"] for line in (tmp_path / where / "metrics.jsonl").read_text().splitlines()]

    device = losses("photometric")
    assert len(loader_batches) == 3
    assert all(b["views"][0] == "uint8" and "photo" in b for b in loader_batches), loader_batches
    loader_batches.clear()
    workers = losses("workers")
    assert len(loader_batches) == 3
    assert all(b["views"][0] == "float32" and "photo" not in b for b in loader_batches), loader_batches
    if torch.cuda.is_available():  # CUDA kernels against the CPU's in the workers: the images differ in rounding
        assert device == pytest.approx(workers, rel=1e-5)
    else:
        assert device == workers


def test_a_run_of_an_older_repre_resumes_with_its_preset(tmp_path):
    """The sections of the frameworks a run does not use may differ (an older run's config migrates into the
    running framework's section only); a change in what the run computes is still refused."""
    from types import SimpleNamespace

    from repre.config import config_from_dict, load_config
    from repre.engine.checkpoints import Checkpoints
    from repre.errors import UserError

    now = SimpleNamespace(cfg=load_config("fmnist-dino-repre"))
    old = load_config("fmnist-dino-repre").to_dict()  # as 0.1.0 wrote it: flat method keys
    old["method"] = {"name": "dino", "momentum": 0.98, "temperature": 0.1, "proj_dim": 256, "mlp_dim": 1024,
                     "freeze_patch_embed": False, "queue_size": 4096, "out_dim": 1024, "norm_last_layer": True,
                     "teacher_temp": 0.04, "warmup_teacher_temp": 0.04, "warmup_teacher_temp_fraction": 0.0,
                     "center_momentum": 0.9, "freeze_last_layer_fraction": 0.05}
    Checkpoints._check_compatible(now, config_from_dict(old), tmp_path / "step.pt")
    old["method"]["temperature"] = 0.2
    with pytest.raises(UserError, match="method.dino.student_temp") as refused:
        Checkpoints._check_compatible(now, config_from_dict(old), tmp_path / "step.pt")
    listed = str(refused.value).split("only ")[-1]
    assert "data.root, eval.*, preset, description" in listed and "eval.batch_size" not in listed  # sections as eval.*


def test_a_restored_window_goes_on_with_each_process_own_sums(monkeypatch):
    """Each process takes back its own sums (the resumed line adds what the uninterrupted one adds, in its order).
    Saved by another number of processes, or by an earlier version (the totals), rank 0 takes the totals (scaled to
    this number of processes, so that each step weighs the same in the line) and the others zeros for the same
    keys, in the same order: the reduction of the next line pairs them (a process
    without the keys skipped the collective: a crash, or a hang with NCCL)."""
    from repre.engine import metrics
    from repre.engine.metrics import WindowMeter

    saved = {"ranks": [{"loss": [6.0, 2.0], "lr": [0.25, 2.0]}, {"loss": [4.0, 2.0], "lr": [0.25, 2.0]}]}
    earlier = {"loss": [10.0, 4.0], "lr": [0.5, 4.0]}  # an earlier version's: the processes' totals

    def restored(state: dict, world: int, rank: int) -> dict[str, list[float]]:
        monkeypatch.setattr(metrics, "world_size", lambda: world)
        monkeypatch.setattr(metrics, "rank", lambda: rank)
        meter = WindowMeter()
        meter.load_state_dict(state)
        return {k: [float(meter.sums[k]), float(meter.counts[k])] for k in meter.sums}

    assert restored(saved, 2, 0) == {"loss": [6.0, 2.0], "lr": [0.25, 2.0]}
    assert restored(saved, 2, 1) == {"loss": [4.0, 2.0], "lr": [0.25, 2.0]}
    assert restored(earlier, 1, 0) == restored(earlier, 2, 0) == earlier
    assert restored(saved, 1, 0) == {"loss": [5.0, 2.0], "lr": [0.25, 2.0]}  # 2 steps of 2 values: of 1 each
    assert restored(saved, 4, 0) == {"loss": [20.0, 8.0], "lr": [1.0, 8.0]}  # of 4 each
    zeros = {"loss": [0.0, 0.0], "lr": [0.0, 0.0]}
    assert restored(saved, 3, 2) == restored(earlier, 2, 1) == zeros and list(restored(saved, 3, 2)) == ["loss", "lr"]
    monkeypatch.setattr(metrics, "world_size", lambda: 1)
    monkeypatch.setattr(metrics, "rank", lambda: 0)
    meter = WindowMeter()
    meter.load_state_dict(saved)
    meter.add({"loss": torch.tensor(2.0), "lr": torch.tensor(0.1)})
    assert meter.read() == {"loss": pytest.approx(7.0 / 3), "lr": pytest.approx(0.35 / 3)} and not meter
    assert WindowMeter().state_dict() == {"ranks": [{}]}
    meter.add({"teacher_temp": 0.04, "lr": 6.25e-05})  # schedules' values: float32 sums, read to their digits
    assert meter.read() == {"teacher_temp": 0.04, "lr": 6.25e-05}  # were 0.03999999910593033, 6.25000005432715e-05


@pytest.mark.parametrize("native", [True, False])
def test_reduced_precision_on_a_cpu_without_native_bf16_is_granted_with_a_warning(native, monkeypatch, repre_log):
    """Emulated bf16 or fp16 runs many times slower than fp32: asked for explicitly, it is run, and said so."""
    from repre.core import runtime
    from repre.core.runtime import pick_precision

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert pick_precision("bf16", cpu) == "bf16" and pick_precision("fp32", cpu) == "fp32"
    assert pick_precision("auto", cpu) == ("bf16" if native else "fp32")
    warned = [r.getMessage() for r in repre_log.records if "emulated" in r.getMessage()]
    assert len(warned) == (0 if native else 1) and all("train.precision=bf16" in m for m in warned)


@pytest.mark.parametrize(("onednn", "flags", "native"), [
    (True, {"avx2", "avx512_f", "avx512_bw", "avx512_vl", "avx512_dq"}, False),  # AVX-512 alone: oneDNN emulates
    (True, {"avx2", "avx512_f", "avx512_bf16"}, True),
    (True, {"avx512_f", "amx_tile", "amx_bf16"}, True),
    (True, {"fp", "asimd", "bf16"}, True),  # Arm with BF16
    (True, None, True),  # the CPU's features unknown: oneDNN's answer
    (False, {"avx512_bf16"}, False),
])
def test_native_bf16_needs_bf16_instructions_not_only_avx512(onednn, flags, native, monkeypatch):
    from repre.core import compat, runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: None if flags is None else frozenset(flags))
    monkeypatch.setattr(compat, "onednn_has_bf16", lambda: onednn)
    assert runtime.cpu_has_bf16() is native


def test_the_cpus_features_come_from_pytorch_else_from_linux(monkeypatch, tmp_path):
    from repre.core.runtime import cpu_flags

    if hasattr(torch.cpu, "get_capabilities"):
        assert cpu_flags() == {k for k, v in torch.cpu.get_capabilities().items() if v is True}
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)  # an older PyTorch
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(str(x86)) == {"fpu", "avx2", "avx512_bf16"} and cpu_flags(str(arm)) == {"fp", "asimd", "bf16"}
    assert cpu_flags(str(tmp_path / "none")) is None  # not Linux: nothing to read


def test_the_summary_knn_says_what_it_reads_before_it_starts(tmp_path, repre_log):
    """The k-NN after the last step can take minutes (all of Fashion-MNIST's 70,000 images): a line says how
    many images it reads, and how to read fewer or none; where the data has no labels, only that it is
    skipped."""
    more = "data.synthetic_train=70"  # not a whole number of batches
    pretrain(tiny_config("train.max_steps=2", "recon.enabled=false", "eval.knn.test_subset=16", more), tmp_path / "r")
    said = [r.getMessage() for r in repre_log.records if r.getMessage().startswith("the summary's k-NN")]
    train_images = len(build_source(tiny_config(more).data, "train"))
    assert len(said) == 1 and f"{train_images:,} training images" in said[0] and "16 held-out ones" in said[0]
    assert "eval.knn.train_subset=N" in said[0] and "eval.knn.enabled=false" in said[0]
    start = [m for m in (r.getMessage() for r in repre_log.records) if " into " in m and "steps of" in m]
    device = str(setup_runtime(tiny_config().train).device)  # cpu here, cuda on a GPU machine
    batch, classes = tiny_config().train.batch_size, tiny_config().data.synthetic_classes
    epochs = 2 / (train_images // batch)  # the epochs the sampler runs: each drops its last partial batch
    images = f"{epochs:.3g} epochs of synthetic: {train_images} images, {classes} classes"
    assert start == [f"{tiny_config().preset} into {tmp_path / 'r'}: 2 steps of {batch} images ({images}), "
                     f"on {device} in fp32; metrics.jsonl and checkpoints/ there, curves: tensorboard --logdir "
                     f"{tmp_path / 'r' / 'tb'}"]


def test_lambda_weighs_the_reconstruction_loss_in_every_step(tmp_path):
    """loss = contrastive + recon.weight x reconstruction on every train line (λ 2: a dropped λ fails)."""
    cfg = tiny_config("recon.weight=2.0", "train.max_steps=4", "train.log_every=1", "eval.knn.enabled=false",
                      "train.diagnose_every=0")
    pretrain(cfg, tmp_path / "r")
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert len(train) == 4
    for r in train:
        assert r["loss"] == pytest.approx(r["loss_contrastive"] + 2.0 * r["loss_recon"], rel=1e-5)


@pytest.mark.parametrize("clip_mode", ["global", "per_param"])
def test_the_step_applies_the_scheduled_lr_weight_decay_momentum_and_clipping(tmp_path, clip_mode):
    """The optimizer's groups carry each step's scheduled lr and weight decay (0 for the group that does not
    decay), the EMA pairs move with the step's scheduled momentum (the logged one is read from the table), and
    the gradients it steps with are clipped to train.clip_grad, over all of them or each tensor alone (DINO's
    recipe: a rising decay, per-parameter clipping)."""
    from conftest import DINO_TINY
    from repre.engine.trainer import Trainer

    cfg = tiny_config(*DINO_TINY, "train.max_steps=3", "train.weight_decay_end=0.4", "train.clip_grad=0.05",
                      f"train.clip_mode={clip_mode}", "eval.knn.enabled=false", "train.warmup_fraction=0.5")
    trainer = Trainer(cfg, tmp_path / "run")
    seen, momenta, method = [], [], trainer.model.method
    after_backward, update_momentum = method.after_backward, method.update_momentum

    def spy() -> None:  # called after the clipping, before the optimizer step
        groups = trainer.optimizer.param_groups
        grads = [p.grad for g in groups for p in g["params"] if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(grad) for grad in grads])
        seen.append(([g["lr"] for g in groups], [g["weight_decay"] for g in groups], norms))
        after_backward()

    def moved(momentum: float) -> None:
        momenta.append(momentum)
        update_momentum(momentum)

    method.after_backward, method.update_momentum = spy, moved
    trainer.fit()
    sched = trainer.schedules
    assert len(seen) == 3 and momenta == pytest.approx([float(m) for m in sched.momentum[:3]])
    assert momenta[2] > momenta[0]
    for step, (lrs, wds, norms) in enumerate(seen):
        assert lrs == pytest.approx([float(sched.lr[step])] * len(lrs))
        assert wds[0] == pytest.approx(float(sched.weight_decay[step])) and wds[1] == 0.0
        total = float(torch.linalg.vector_norm(norms))
        if clip_mode == "global":
            assert total <= 0.05 * (1 + 1e-4)
        else:  # each tensor's norm within the bound, so all of them beyond it
            assert float(norms.max()) <= 0.05 * (1 + 1e-4) and total > 0.05
    assert float(sched.weight_decay[2]) > float(sched.weight_decay[0])


def test_a_data_workers_error_stops_the_workers_at_once(tmp_path):
    """The error's traceback holds the loader's iterator: its workers are stopped when the error leaves the
    run, not when the traceback is collected (then after a 5 s join timeout each, in a library user's process)."""
    import multiprocessing

    from repre.errors import UserError

    for i in range(4):  # no image readable: the worker raises the UserError
        (tmp_path / "bad" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / "a" / f"{i}.png").write_bytes(b"not an image")
    cfg = tiny_config("data.name=folder", f"data.root={tmp_path / 'bad'}", "train.batch_size=2",
                      "train.num_workers=1")
    with pytest.raises(UserError, match="none of the 4 images"):
        pretrain(cfg, tmp_path / "run")
    assert not multiprocessing.active_children()


def test_the_processes_agree_on_image_counts_and_a_stop_at_sync_points(monkeypatch):
    """Distributed: a process's counts wait for the sync point, which sums them over the processes, and a signal
    that reached another process stops this one there, not before. One process: both at once."""
    from types import SimpleNamespace

    from repre.engine import agreement as agreement_mod
    from repre.engine.agreement import Agreement
    from repre.engine.state import RunState

    batch = {"skipped": torch.tensor(1), "upscaled": torch.tensor(2)}
    state = RunState()
    alone = Agreement(state, torch.device("cpu"))
    alone.signal = SimpleNamespace(requested=False)
    alone.add_images(batch)
    assert (state.skipped_images, state.upscaled_images) == (1, 2) and not alone.stopping()
    alone.signal.requested = True
    assert alone.stopping()

    monkeypatch.setattr(agreement_mod.dist, "is_distributed", lambda: True)
    others = [torch.tensor([3.0, 0.0, 1.0]), torch.zeros(3)]  # the other process: 3 skipped images and a stop; none
    monkeypatch.setattr(agreement_mod.dist, "all_reduce_sum", lambda x: x + others.pop(0))
    state = RunState()
    agreed = Agreement(state, torch.device("cpu"))
    agreed.signal = SimpleNamespace(requested=False)
    agreed.add_images(batch)
    assert (state.skipped_images, state.upscaled_images) == (0, 0) and not agreed.stopping()
    agreed.sync()
    assert (state.skipped_images, state.upscaled_images) == (4, 2) and agreed.stopping()
    agreed.sync()  # nothing new on either process: the counts stand, the stop too
    assert (state.skipped_images, state.upscaled_images) == (4, 2) and agreed.stopping()


@pytest.mark.parametrize("stages", ["photometric", "crops"])
def test_train_step_refuses_a_batch_of_the_loader_not_finished_on_the_device(tmp_path, stages):
    """Stages left for the device (uint8 views, or packed images): a loader batch given to train_step as it is
    would train on unfinished views; it says what to call instead."""
    from repre.engine.trainer import Trainer

    trainer = Trainer(tiny_config(f"data.device_stages={stages}", "train.num_workers=0"), tmp_path / "run")
    batch = next(iter(trainer.data.loader(0, False)))
    with trainer.settings():
        with pytest.raises(TypeError, match=r"trainer.train_step\(trainer.data.to_device\(batch\)\)"):
            trainer.train_step(batch)
        assert torch.isfinite(trainer.train_step(trainer.data.to_device(batch))["loss"])


def test_one_step_at_lr_0_keeps_the_initial_encoder_a_random_init_reference(tmp_path):
    """docs/evaluation.md's random-init reference: `train.max_steps=1 train.lr=0` writes a run whose encoder is
    the initial one, bit for bit, to evaluate as any run (the floor a pre-trained row is read against)."""
    import copy

    from repre.engine.trainer import Trainer

    trainer = Trainer(tiny_config("train.max_steps=1", "train.lr=0", "eval.knn.enabled=false"), tmp_path / "run")
    before = copy.deepcopy(trainer.model.method.encoder.state_dict())
    trainer.fit()
    after = trainer.model.method.encoder.state_dict()
    assert all(torch.equal(after[name], value) for name, value in before.items())


def test_the_random_state_resumes_between_a_plain_process_and_a_one_process_group(monkeypatch):
    """A run written by a plain process goes on under `torchrun --nproc_per_node 1` with its drop-path draws, and
    the reverse: one process either way. With another number of processes each keeps its new seed."""
    from repre.core import rng

    cpu = torch.device("cpu")
    torch.manual_seed(1)
    plain = rng.state_dict(cpu)
    group = {**plain, "ranks": [rng.state_dict(cpu)]}  # what a one-process group writes
    expected = torch.rand(3)
    for saved in (plain, group):
        torch.manual_seed(2)
        rng.load_state_dict(saved, cpu)
        assert torch.equal(torch.rand(3), expected)
    monkeypatch.setattr(rng.dist, "world_size", lambda: 2)
    torch.manual_seed(2)
    fresh = torch.rand(3)
    torch.manual_seed(2)
    rng.load_state_dict(group, cpu)
    assert torch.equal(torch.rand(3), fresh)


def test_the_periodic_k_nn_and_checkpoints_are_no_training_time(tmp_path, monkeypatch):
    """A run's train_s and images/s are its steps' (data waits included): the periodic k-NN's time was counted
    into the next step and window, so runs of other train.eval_every compared at other speeds. A clock that
    only the k-NN moves: the run's training time stays as the steps alone give it."""
    import types

    import repre.engine.clock as clock_mod
    import repre.engine.trainer as trainer_mod
    import repre.eval.callbacks as callbacks_mod

    now = [0.0]

    def clock() -> float:
        now[0] += 0.001  # every reading: the steps' time
        return now[0]

    knn = callbacks_mod.knn_eval

    def slow_knn(*args, **kwargs):
        now[0] += 100.0  # a k-NN of 100 s
        return knn(*args, **kwargs)

    for module in (trainer_mod, clock_mod):
        monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(callbacks_mod, "knn_eval", slow_knn)
    summary = pretrain(tiny_config("train.max_steps=4", "train.eval_every=1", "train.log_every=2",
                                   "eval.knn.enabled=false"), tmp_path / "run")
    assert summary["train_s"] < 1
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in lines].count("eval") == 3  # the k-NN ran, at steps 1 to 3
    assert all(r["images_per_sec"] > 1000 for r in lines if r["kind"] == "train")


def test_data_that_stops_reading_mid_run_keeps_the_steps_so_far(tmp_path, image_folder, monkeypatch):
    """A mount lost mid-run: every draw fails and the data is refused. The weights of the last step are whole:
    they are saved, and the message says how to go on; the resumed run ends where an unbroken one does."""
    from repre.data import folder as folder_module
    from repre.data.folder import ImageFolder, UnreadableImage
    from repre.errors import UserError

    monkeypatch.setattr(folder_module, "_said", set())  # the files it names: not said to the tests after it
    loads, load = [0], ImageFolder.load

    def failing_after_3_steps(self, index):
        loads[0] += 1
        if loads[0] > 3 * 4:  # 4 images a step (batch 4, num_workers=0): the fourth step's reads fail
            raise UnreadableImage(f"{self.path(index)}: no such file")
        return load(self, index)

    args = ("data.name=folder", f"data.root={image_folder}", "train.batch_size=4", "train.max_steps=6",
            "train.num_workers=0", "train.checkpoint_every=100", "train.eval_every=0")
    monkeypatch.setattr(ImageFolder, "load", failing_after_3_steps)
    with pytest.raises(UserError, match=r"none of the .* images .*; step 3 saved to .*step-00000003\.pt: once the "
                                        r"data reads again, go on with `repre pretrain --out .* --resume`"):
        pretrain(tiny_config(*args), tmp_path / "run")
    monkeypatch.setattr(ImageFolder, "load", load)
    summary = pretrain(tiny_config(*args), tmp_path / "run", resume=True)
    whole = pretrain(tiny_config(*args), tmp_path / "whole")
    assert summary["completed"] and summary["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_a_run_reads_its_batches_from_its_first_step_and_a_resumed_one_from_where_it_stopped(tmp_path, monkeypatch):
    """The loader starts at the run's step: batch 0 of the first epoch's order is trained on, and a resume
    neither repeats nor skips one."""
    from repre.data.pipeline import PretrainData
    from repre.engine.trainer import Trainer

    starts, loader = [], PretrainData.loader
    monkeypatch.setattr(PretrainData, "loader",
                        lambda self, start, pin: starts.append(start) or loader(self, start, pin))
    settings = ["train.checkpoint_every=2", "train.num_workers=0", "eval.knn.enabled=false", "train.diagnose_every=0"]
    Trainer(tiny_config(*settings, "train.max_steps=2"), tmp_path / "run").fit()
    Trainer(tiny_config(*settings, "train.max_steps=4"), tmp_path / "run", resume=True).fit()
    assert starts == [0, 2]
