import copy
import json
import logging
import math
from pathlib import Path

import pytest
import torch

from conftest import last_json, run_cli
from repre.errors import UserError
from repre.eval.knn import knn_predict
from repre.eval.linear import head_top1, train_linear


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 4
    y = torch.arange(500) % 5
    x = centers[y] + torch.randn(500, 16, generator=g)
    torch.manual_seed(0)
    head = train_linear(x[:400], y[:400], 5, lr=1e-2, wd=0.0, epochs=100)  # one batch an epoch: 100 steps
    assert head_top1(head, x[400:], y[400:]) > 0.98


def test_the_quick_probe_s_sweep_compares_settings_not_initial_heads():
    """Each cell starts from the same head (drawn from the seed, not from whatever the global RNG holds), so
    equal settings score equally, and the retrained head does not depend on the grid's size."""
    from repre.config import load_config
    from repre.eval.linear import sweep
    from repre.eval.protocols import LinearProtocol

    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 5
    x = torch.randn(5, 16, generator=g)[y] + 2 * torch.randn(300, 16, generator=g)  # overlapping classes
    cfg = load_config(None, ["eval.linear.lrs=[0.01]", "eval.linear.wds=[0.0, 0.0, 0.0]"])
    protocol = LinearProtocol("quick", "cls", 1, epochs=3, batch_size=64, base_lr=None)
    scores = {row["val_top1"] for row in sweep(x, y, 5, cfg, protocol)}
    assert len(scores) == 1
    torch.manual_seed(1)
    first = train_linear(x, y, 5, 0.01, 0.0, 3, seed=7).weight
    torch.manual_seed(2)
    assert torch.equal(first, train_linear(x, y, 5, 0.01, 0.0, 3, seed=7).weight)
    with pytest.raises(UserError, match="2 training image"):  # one left to fit: its std is NaN
        sweep(x[:2], y[:2], 5, cfg, protocol)


def test_the_quick_probe_standardizes_every_feature_by_the_training_features_statistics(monkeypatch):
    """The head fits train features standardized per feature, and reads test features standardized by the
    train features' mean and std (their own would hide a shift between the splits)."""
    from conftest import tiny_config
    from repre.core.runtime import setup_runtime
    from repre.eval import linear
    from repre.eval.protocols import resolve
    from repre.models.backbone import Backbone

    standard = linear.standardizer(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
    fitted = standard(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
    assert torch.allclose(fitted.mean(0), torch.zeros(2)) and torch.allclose(fitted.std(0), torch.ones(2), atol=1e-4)
    assert torch.allclose(standard(torch.tensor([[1.0, 20.0], [3.0, 50.0]])),
                          torch.tensor([[0.0, 0.0], [2 / 2**0.5, 30 / 200**0.5]]), atol=1e-4)  # the std: n - 1
    g = torch.Generator().manual_seed(0)
    xtr, ytr = torch.randn(40, 3, generator=g) * 5 + 3, torch.arange(40) % 2
    xte, yte = torch.randn(10, 3, generator=g) * 2 - 7, torch.arange(10) % 2
    features = iter([(xtr, ytr), (xte, yte)])
    monkeypatch.setattr(linear, "block_features", lambda *args: next(features))
    seen = []

    class Spy(torch.nn.Linear):
        def forward(self, x):
            seen.append(x)
            return super().forward(x)

    def spy_head(x, y, classes, *args, **kw):
        seen.append(x)
        return Spy(x.shape[1], classes)

    cfg = tiny_config("eval.linear.lrs=[0.01]", "eval.linear.wds=[0.0]")
    encoder = Backbone(cfg.model.arch, cfg.model.kwargs)
    monkeypatch.setattr(linear, "train_linear", spy_head)
    linear.quick_eval(encoder, cfg, setup_runtime(cfg.train), resolve(cfg.eval.linear, encoder))
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    fit_input, test_input = seen[-2], seen[-1]  # the retrained head's train features, then the test features
    assert torch.allclose(fit_input, (xtr - mean) / std) and torch.allclose(test_input, (xte - mean) / std)


def test_knn_weighted_vote():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    assert knn_predict(bank, labels, queries, k=2, temperature=0.07, classes=2).tolist() == [0, 1]
    # with k = 3 every query sees all three; the two close class-0 neighbours outvote for the first
    assert knn_predict(bank, labels, queries, k=3, temperature=0.07, classes=2).tolist() == [0, 1]


def test_layer_decay_groups():
    from repre.eval.finetune import layer_decay_groups
    from repre.models.backbone import Backbone

    enc = Backbone("vit_tiny_patch16_224", dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2))
    enc.model.reset_classifier(3)
    groups = layer_decay_groups(enc.model, 4, 0.05, 0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    m = enc.model
    assert scale[id(m.head.weight)] == 1.0 and scale[id(m.blocks[3].attn.qkv.weight)] == 0.5
    assert scale[id(m.blocks[0].attn.qkv.weight)] == 0.5**4 and scale[id(m.patch_embed.proj.weight)] == 0.5**5
    assert wd[id(m.blocks[0].norm1.weight)] == 0.0 and wd[id(m.pos_embed)] == 0.0 and wd[id(m.head.weight)] == 0.05


def test_layer_decay_groups_of_a_swin_leave_its_position_tables_undecayed():
    """Swin's relative position tables are matrices that its `no_weight_decay()` exempts (Swin's fine-tuning);
    a stage's patch merging goes with the block before it (SimMIM's `get_swin_layer`: timm puts it at the
    start of the stage after)."""
    from repre.eval.finetune import block_offsets, layer_decay_groups
    from repre.models.backbone import Backbone, resolve_arch

    enc = Backbone(*resolve_arch("swin_pico_patch2_window4", 32, 0.0, {}))
    m = enc.model
    m.reset_classifier(3)
    groups = layer_decay_groups(m, block_offsets(m)[-1], 0.05, 0.5)
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    tables = [p for name, p in m.named_parameters() if name.endswith("relative_position_bias_table")]
    assert len(tables) == 6 and all(wd[id(p)] == 0.0 for p in tables)
    assert wd[id(m.layers[0].blocks[0].attn.qkv.weight)] == 0.05 and wd[id(m.head.fc.weight)] == 0.05
    assert scale[id(m.layers[1].downsample.reduction.weight)] == scale[id(m.layers[0].blocks[-1].attn.qkv.weight)]
    assert scale[id(m.layers[1].downsample.reduction.weight)] < scale[id(m.layers[1].blocks[0].attn.qkv.weight)]
    assert scale[id(m.layers[2].blocks[1].attn.qkv.weight)] == 0.5 and scale[id(m.head.fc.weight)] == 1.0


def test_an_evaluation_gives_the_same_result_whatever_the_global_rng(tiny_run):
    """A new head's initialisation is drawn from the run's seed, not from whatever state the caller left."""
    from repre.eval import evaluate

    out, _ = tiny_run
    overrides = ["eval.finetune.steps=3", "eval.finetune.train_subset=32", "eval.finetune.batch_size=16"]
    torch.manual_seed(1)
    first = evaluate("finetune", out, overrides)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = evaluate("finetune", out, overrides)
    assert first == second
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left as it was
    confusion = torch.tensor(first["extra"]["confusion"])  # each class's top-1 and the counts, as k-NN's
    assert confusion.sum() == 32 and first["value"] == pytest.approx(float(confusion.trace()) / 32)
    assert len(first["extra"]["per_class_top1"]) == 10
    evaluate("recon", out, ["eval.recon.subset=8", "eval.recon.images=2"])  # builds the whole model
    assert torch.equal(torch.get_rng_state(), state)


def test_a_task_s_result_is_filed_under_the_name_it_was_asked_by(tiny_run, monkeypatch):
    """Every encoder task is called the same way, `out` included; a result named otherwise (a task's literal
    mistyped) would be filed, compared and exported under that name: refused."""
    import repre.eval as eval_mod

    out, _ = tiny_run
    seen = []

    def task(encoder, cfg, rt, folder=None):
        seen.append(folder)
        return {"task": "knn-typo", "metric": "top1", "value": 0.5, "extra": {}}

    monkeypatch.setattr(eval_mod, "encoder_tasks", lambda: {"knn": task})
    with pytest.raises(RuntimeError, match="evaluation knn returned a result named 'knn-typo'"):
        eval_mod.evaluate("knn", out, out=out / "x")
    assert seen == [out / "x"]


def test_fine_tuning_on_fewer_images_than_its_batch_names_its_own_batch_key(tiny_run, capsys):
    """The advice names the key `repre eval finetune` reads (train.batch_size it refuses: not read)."""
    out, _ = tiny_run
    code, _ = run_cli(["eval", "finetune", "--checkpoint", str(out), "--set", "eval.finetune.batch_size=128"])
    err = capsys.readouterr().err
    assert code == 2 and "(eval.finetune.batch_size=128); lower eval.finetune.batch_size" in err


def test_eval_knn_on_val_through_the_cli(tiny_run):
    out, _ = tiny_run
    code, stdout = run_cli(["eval", "knn", "--checkpoint", str(out), "--set", "eval.split=val",
                            "--set", "eval.val_size=16"])
    result = last_json(stdout)
    assert code == 0 and result["extra"]["queries"] == 16 and result["extra"]["bank"] == 64 - 16
    code, stdout = run_cli(["eval", "knn", "--checkpoint", str(out), "--set", "eval.split=val",
                            "--set", "eval.val_size=16", "--set", "eval.knn.k=500"])
    assert code == 0 and last_json(stdout)["extra"]["k"] == 48  # the k that voted: the whole bank


def test_an_evaluation_each_process_runs_whole_warns_from_rank_0_alone(tiny_run, repre_log, monkeypatch):
    """Under torchrun k-NN, fine-tuning and the dense probe run whole in every process: each repeated rank 0's
    warnings (eight copies of each on eight GPUs). The others say only their errors now."""
    import repre
    from repre.core import launch

    run, _ = tiny_run
    overrides = ["eval.split=val", "eval.val_size=16", "eval.knn.k=500"]
    repre.evaluate("knn", run, overrides)
    assert "eval.knn.k=500 is more than the bank's 48 images" in repre_log.text
    repre_log.clear()
    monkeypatch.setattr(launch, "launch_rank", lambda: 1)
    assert repre.evaluate("knn", run, overrides)["extra"]["k"] == 48
    assert "eval.knn.k=500" not in repre_log.text


@pytest.mark.parametrize(("protocol", "said"), [("quick", False), ("mocov3", True)])
def test_the_linear_probe_warns_from_every_process_only_where_they_share_its_work(tiny_run, repre_log, monkeypatch,
                                                                                   protocol, said):
    """The `quick` protocol runs whole in each process, as k-NN does: rank 0 alone warns; the papers' protocols
    share the work (each process its own images): every process says what it meets."""
    import repre
    from repre.core import launch
    from repre.eval import linear

    def warning_probe(encoder, cfg, rt, out=None):
        logging.getLogger("repre").warning("a warning of the probe's data")
        return {"task": "linear", "metric": "top1", "value": 0.5, "extra": {}}

    monkeypatch.setattr(linear, "linear_eval", warning_probe)
    monkeypatch.setattr(launch, "launch_rank", lambda: 1)
    repre.evaluate("linear", tiny_run[0], [f"eval.linear.protocol={protocol}"])
    assert ("a warning of the probe's data" in repre_log.text) == said


def test_every_evaluation_that_needs_labels_says_so_on_unlabelled_data(tmp_path, repre_log):
    """Shards without labels: k-NN, both linear probes and fine-tuning exit 2 naming what they need; the
    run's k-NN is skipped with a note, and no line announces the images it would have read."""
    import pytest

    from conftest import tiny_config, write_shards
    from repre.core.runtime import setup_runtime
    from repre.errors import UserError
    from repre.eval import encoder_tasks
    from repre.eval.lincls import probe_source
    from repre.models.backbone import Backbone

    for split in ("train", "val"):
        write_shards(tmp_path / split, shards=1, per_shard=4, labels=False)
    cfg = tiny_config("data.name=shards", f"data.root={tmp_path}", "data.image_size=16")
    encoder, rt = Backbone(cfg.model.arch, cfg.model.kwargs), setup_runtime(cfg.train)
    for task in set(encoder_tasks()) - {"segment"}:  # every task but the dense probe, which has its own scenes
        with pytest.raises(UserError, match="needs labels, which these images have not: labels come from class "
                                            "sub-folders .*a KEY.cls per sample in shards"):
            encoder_tasks()[task](encoder, cfg, rt)
    with pytest.raises(UserError, match="^the linear probe needs labels"):
        probe_source(cfg)
    from repre.pretraining import pretrain

    summary = pretrain(tiny_config("data.name=shards", f"data.root={tmp_path}", "data.image_size=16",
                                   "train.batch_size=4", "train.max_steps=4", "train.eval_every=1",
                                   "eval.knn.enabled=true"),
                       tmp_path / "run")
    said = [r.getMessage() for r in repre_log.records]
    assert summary["knn_top1"] is None
    assert [m for m in said if "k-NN" in m and "skipped" in m] == [  # once, for the periodic and final k-NN
        next(m for m in said if m.startswith("k-NN skipped in this run: k-NN needs labels"))]
    assert not any(m.startswith("the summary's") for m in said)


def test_knn_reports_each_class_and_the_confusion():
    from repre.eval.scores import per_class

    truth, pred = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0, 1])
    out = per_class(pred, truth, 4, ["a", "b", "c", "d"])
    assert out["per_class_top1"] == {"a": 0.5, "b": pytest.approx(2 / 3), "c": 0.0, "d": None}
    assert out["confusion"] == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert "confusion" not in per_class(pred, truth, 101, None) and per_class(pred, truth, 3, None)["classes"] is None
    twice = per_class(pred, truth, 4, ["a", "b", "a", "d"])["per_class_top1"]  # a name twice: each class kept
    assert twice == {"a (0)": 0.5, "b": pytest.approx(2 / 3), "a (2)": 0.0, "d": None}


def tensorboard_series(tb: Path, tag: str) -> list[tuple[int, float]]:
    """`tag`'s points as TensorBoard charts them: its event files read in name order, a point at a step not
    above the last one's dropping those at its step or later (its reservoir's preemption: a restart)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # scalars as tensors

    series: list[tuple[int, float]] = []
    for file in sorted(tb.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(file)).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    series = [(s, v) for s, v in series if s < event.step] + [(event.step, value.tensor.float_val[0])]
    return series


def test_repre_eval_of_a_runs_checkpoints_draws_their_curve_in_its_tensorboard(tiny_run, tmp_path):
    """Each checkpoint evaluated with the run's own settings adds a point at its step (repre_eval/TASK_METRIC);
    a result of other settings (a --set that changes what is measured) is left out of the curve."""
    import shutil


    run = tmp_path / "run"
    # other tests evaluate the shared run
    shutil.copytree(tiny_run[0], run, ignore=shutil.ignore_patterns("tb", "eval"))
    (run / "tb").mkdir()
    values = {}
    for checkpoint, how in ((run / "checkpoints" / "step-00000010.pt", "eval.batch_size=32"),
                            (run, "train.num_workers=0")):  # run-only keys
        code, stdout = run_cli(["eval", "knn", "--checkpoint", str(checkpoint), "--set", how])
        assert code == 0
        evaluated = last_json(stdout)["checkpoint"]
        values[evaluated["step"]] = last_json(stdout)["value"]
        # the step file, not last.pt (which names another step once the run goes on)
        assert evaluated["file"] == str(run / "checkpoints" / f"step-{evaluated['step']:08d}.pt")
    assert run_cli(["eval", "knn", "--checkpoint", str(run), "--set", "eval.knn.k=3"])[0] == 0
    # the run's own settings repeated measure what the run measures: filed, drawn and compared as its own (they
    # named a folder of other settings, and the curve left the point out)
    code, stdout = run_cli(["eval", "knn", "--checkpoint", str(run), "--set", "eval.knn.k=20", "--set",
                            "eval.knn.temperature=0.07", "--set", "data.name=synthetic"])
    assert code == 0 and last_json(stdout)["checkpoint"]["set"] == []
    assert last_json(stdout)["value"] == pytest.approx(values[20])
    # the precision rounds the features measured: its result kept apart (it replaced the run's own)
    assert run_cli(["eval", "knn", "--checkpoint", str(run), "--set", "train.precision=bf16"])[0] == 0  # run: fp32
    points = tensorboard_series(run / "tb" / "repre_eval", "repre_eval/knn_top1")
    assert [step for step, _ in points] == [10, 20] and dict(points) == pytest.approx(values)  # no third point
    # each result kept: the run's own in eval/knn/, the earlier checkpoint's and the other k's beside it
    kept = {str(p.parent.relative_to(run / "eval" / "knn")): json.loads(p.read_text())["value"]
            for p in (run / "eval" / "knn").rglob("result.json")}
    assert set(kept) == {".", "step-00000010", "eval.knn.k=3", "train.precision=bf16"}
    assert kept["."] == pytest.approx(values[20])


def test_settings_that_repeat_the_run_s_own_are_left_out_of_what_was_measured(tiny_run, tmp_path):
    """Compared as the evaluation builds its config: data.mean=null on other images measures with their own
    statistics, where the run's are kept otherwise (`load_checkpoint_config`)."""
    from repre.pretrained import changed_settings

    run, _ = tiny_run
    folder = ["data.name=folder", f"data.root={tmp_path}"]
    assert changed_settings(run, ["eval.knn.k=20", *folder, "train.num_workers=0"]) == folder  # the run's k: out
    unpinned = [*folder, "data.mean=null", "data.std=null"]
    assert changed_settings(run, unpinned) == unpinned
    assert changed_settings(run, ["eval.knn={k: 20, temperature: 0.07}"]) == []  # a section given whole
    assert changed_settings(run, ["eval.knn.k=3", "eval.knn.k=20"]) == []  # the later item is the one taken
    assert changed_settings(run, ["eval.knn.kk=3"]) == ["eval.knn.kk=3"]  # not loaded: the command says why


def test_per_class_scores_of_many_classes_need_no_table_of_them_all():
    """Beyond CONFUSION_CLASSES the scores come from counts by class (21,843 classes made a 3.8 GB table)."""
    from repre.eval import scores

    gen = torch.Generator().manual_seed(0)
    truth, pred = torch.randint(0, 150, (3000,), generator=gen), torch.randint(0, 150, (3000,), generator=gen)
    pred[::3] = truth[::3]
    table = torch.zeros(150, 150, dtype=torch.int64)
    table.index_put_((truth, pred), torch.ones_like(truth), accumulate=True)
    names = [f"c{i % 149}" for i in range(150)]  # one name twice: told apart by its label
    assert scores.per_class(pred, truth, 150, names) == scores.scores_of(table, names)
    assert "c0 (0)" in scores.per_class(pred, truth, 150, names)["per_class_top1"]
    few = scores.per_class(truth[:50] % 10, truth[:50] % 10, 10, None)
    assert few["confusion"][3][3] == int((truth[:50] % 10 == 3).sum()) and few["per_class_top1"]["3"] == 1.0


def test_a_result_goes_where_no_other_result_is(tmp_path, monkeypatch):
    """`repre eval`'s default folder: the run's newest checkpoint with the run's settings in eval/TASK/, an
    earlier checkpoint (however it is named: a symlink, a relative path) or settings that change what is
    measured in a folder of their own under it; a result of the former newest checkpoint moves aside when the
    run has gone on."""
    import os

    from repre.core.eval_results import eval_dir, move_superseded_result
    from repre.core.run_files import checkpoint_step

    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    checkpoints.mkdir(parents=True)
    for step in (200, 300):
        (checkpoints / f"step-00000{step}.pt").write_bytes(str(step).encode())
        (checkpoints / f"step-00000{step}.pt.sha256").write_text(f"digest{step} 3\n")
    os.link(checkpoints / "step-00000300.pt", checkpoints / "last.pt")
    knn = run / "eval" / "knn"
    assert eval_dir(run, "knn", []) == eval_dir(checkpoints / "last.pt", "knn", []) == knn
    assert eval_dir(checkpoints / "step-00000300.pt", "knn", ["eval.batch_size=64", "train.device=cpu"]) == knn
    assert eval_dir(checkpoints / "step-00000200.pt", "knn", []) == knn / "step-00000200"
    (run / "best.pt").symlink_to(checkpoints / "step-00000200.pt")
    monkeypatch.chdir(checkpoints)
    assert eval_dir(run / "best.pt", "knn", []) == eval_dir("step-00000200.pt", "knn", []) == knn / "step-00000200"
    assert eval_dir(run, "knn", ["eval.split=val"]) == knn / "eval.split=val"
    assert eval_dir(run, "knn", ["eval.linear.epochs=5"]) == knn  # another task's key: k-NN measures the same
    # a key given twice is measured at its later value: the folder is that value's (both orders shared one)
    assert eval_dir(run, "knn", ["eval.knn.k=1", "eval.knn.k=50"]) == eval_dir(run, "knn", ["eval.knn.k=50"])
    assert eval_dir(run, "knn", ["eval.knn.k=50", "eval.knn.k=1"]) == knn / "eval.knn.k=1"
    ade = eval_dir(checkpoints / "step-00000200.pt", "segment", ["eval.segment.root=/data/ade"])
    assert ade.parent == run / "eval" / "segment" / "step-00000200"
    assert ade.name.startswith("eval.segment.root=_data_ade..")
    assert eval_dir(run, "knn", ["data.root=/a/b_c"]) != eval_dir(run, "knn", ["data.root=/a_b/c"])  # '/' as '_'
    models = tmp_path / "models"  # checkpoint files side by side, outside a run: a folder each
    models.mkdir()
    for name in ("a.pt", "b.pt"):
        (models / name).write_bytes(b"pt")
    assert eval_dir(models / "a.pt", "knn", []) == models / "eval" / "knn" / "a" != eval_dir(models / "b.pt", "knn", [])
    assert len(eval_dir(run, "knn", [f"data.root=/{'x' * 200}"]).name) <= 80
    # a name a shell reads as it is: no brackets to glob, no quotes, no spaces; where characters were left out
    # or replaced, the settings' hash keeps two of them apart
    named = eval_dir(run, "linear", ["eval.linear.lrs=[0.1, 0.01]", "data.root='/my data/*'"]).name
    assert named.startswith("data.root=_mydata__,eval.linear.lrs=0.1,0.01..") and len(named) == 54
    # the same settings in another order: the same folder (two orders made two rows in repre compare)
    assert eval_dir(run, "knn", ["eval.knn.k=5", "eval.knn.temperature=0.1"]) == eval_dir(
        run, "knn", ["eval.knn.temperature=0.1", "eval.knn.k=5"]) == knn / "eval.knn.k=5,eval.knn.temperature=0.1"
    assert eval_dir(run, "knn", ["data.root=/数据/猫"]) != eval_dir(run, "knn", ["data.root=/数据/狗"])
    (checkpoints / "last.pt").unlink()  # a filesystem without hard links: last.pt a copy, its checksum too
    (checkpoints / "last.pt").write_bytes(b"300")
    (checkpoints / "last.pt.sha256").write_text("digest300 3\n")
    assert checkpoint_step(run) == 300 and eval_dir(checkpoints / "step-00000300.pt", "knn", []) == knn
    # the run went on to step 400: step 300's results move aside, with their pictures, where eval_dir puts them
    for folder in (knn, knn / "eval.split=val"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").write_text(json.dumps({"value": 0.5, "checkpoint": {"step": 300}}))
        (folder / "picture.png").write_bytes(b"png")
    move_superseded_result(run, "knn", [])
    assert sorted(p.name for p in knn.iterdir()) == ["eval.split=val", "picture.png", "result.json"]  # step 300
    (checkpoints / "step-00000400.pt").write_bytes(b"400")
    (checkpoints / "last.pt").unlink()
    os.link(checkpoints / "step-00000400.pt", checkpoints / "last.pt")
    move_superseded_result(run, "knn", [])
    move_superseded_result(run, "knn", ["eval.split=val"])
    assert sorted(p.name for p in knn.iterdir()) == ["eval.split=val", "step-00000300"]
    for settings in ([], ["eval.split=val"]):
        kept = eval_dir(checkpoints / "step-00000300.pt", "knn", settings)
        assert sorted(p.name for p in kept.iterdir() if p.is_file()) == ["picture.png", "result.json"]


def test_a_run_tensorboard_that_cannot_be_written_leaves_the_result_standing(tiny_run, tmp_path, monkeypatch,
                                                                           repre_log):
    """A run folder one may read but not write: no point for the curve, with a warning, and no error (the
    command prints and keeps its result as ever)."""
    import torch.utils.tensorboard

    from repre.engine.metrics import add_evaluation

    def refuse(*_, **__):
        raise PermissionError("read-only")

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", refuse)
    result = {"task": "knn", "metric": "top1", "value": 0.5, "checkpoint": {"step": 20, "set": []}}
    assert add_evaluation(tiny_run[0], result) is None
    assert "the result is not added" in repre_log.text and "read-only" in repre_log.text


def test_knn_votes_with_k_neighbours_not_one_more():
    q = torch.tensor([[1.0, 0.0]])
    near = torch.nn.functional.normalize(torch.tensor([[0.99, 0.141]]), dim=1)
    bank = torch.cat([q, near, near])  # one class-1 image at the query, two class-0 ones at similarity 0.99
    labels = torch.tensor([1, 0, 0])
    assert knn_predict(bank, labels, q, k=2, temperature=0.07, classes=2).tolist() == [1]  # 1 against 0.87
    assert knn_predict(bank, labels, q, k=3, temperature=0.07, classes=2).tolist() == [0]  # 1 against 1.73


def test_quick_probe_chooses_on_train_alone_and_retrains_with_the_choice(monkeypatch):
    """The sweep fits on the train split less its held-out images and scores on those; the test split is
    scored once, by the head retrained on the whole train split with the chosen lr and weight decay."""
    from conftest import tiny_config
    from repre.core.runtime import setup_runtime
    from repre.eval import linear
    from repre.eval.protocols import resolve
    from repre.models.backbone import Backbone

    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    x = torch.randn(4, 8, generator=g)[y] + 1.5 * torch.randn(200, 8, generator=g)
    xtr, ytr, xte, yte = x[:150], y[:150], x[150:], y[150:]
    features = iter([(xtr, ytr), (xte, yte)])
    monkeypatch.setattr(linear, "block_features", lambda *a: next(features))
    cfg = tiny_config("eval.linear.lrs=[0.00001, 0.1]", "eval.linear.wds=[0.0, 0.5]", "eval.linear.epochs=3")
    encoder = Backbone(cfg.model.arch, cfg.model.kwargs)
    calls = []

    def spy(x, y, classes, lr, wd, *args, **kwargs):
        calls.append((len(x), classes, lr, wd))
        return train_linear(x, y, classes, lr, wd, *args, **kwargs)

    monkeypatch.setattr(linear, "train_linear", spy)
    protocol = resolve(cfg.eval.linear, encoder)
    extra = linear.quick_eval(encoder, cfg, setup_runtime(cfg.train), protocol)["extra"]
    classes = calls[-1][1]
    n_val = max(1, int(cfg.eval.linear.val_fraction * 150))
    assert all(n == 150 - n_val for n, *_ in calls[:-1])  # the sweep fits without its held-out images
    assert calls[-1] == (150, classes, extra["lr"], extra["weight_decay"])  # retrained with the choice
    assert (extra["lr"], extra["weight_decay"]) != (1e-5, 0.0)  # the choice is not the grid's first cell
    monkeypatch.setattr(linear, "train_linear", train_linear)
    assert extra["sweep"] == linear.sweep(xtr, ytr, classes, cfg, protocol)  # never scored on test


def test_knn_votes_are_weighted_by_exp_of_similarity_over_temperature():
    """Two class-0 neighbours at similarity 0.6 outvote one class-1 neighbour at 0.9 under plain or exp(s)
    weights, not under exp(s / 0.07) (InstDisc's and DINO's eval_knn)."""
    q = torch.tensor([[1.0, 0.0, 0.0]])

    def at(c: float) -> list[float]:
        return [c, (1 - c * c) ** 0.5, 0.0]

    bank = torch.tensor([at(0.6), [0.6, 0.0, 0.8], at(0.9)])
    labels = torch.tensor([0, 0, 1])
    assert knn_predict(bank, labels, q, k=3, temperature=0.07, classes=2).tolist() == [1]
    assert knn_predict(bank, labels, q, k=3, temperature=10.0, classes=2).tolist() == [0]
    # exp(s / T) overflows float32 above s / T = 88.7: at T = 0.005 DINO's votes are all inf, and class 0 won
    assert knn_predict(bank, labels, q, k=3, temperature=0.005, classes=2).tolist() == [1]


def test_fine_tuning_changes_all_of_the_encoder_from_a_head_of_near_zero_logits():
    """Every parameter is fine-tuned, as the references do: model.init=mocov3's fixed sin-cos position embedding and
    a frozen patch projection stayed as pre-trained. The head is drawn as MAE's (std 2e-5, bias 0; timm's default
    started the logits at random)."""
    from conftest import tiny_config
    from repre.builder import build_encoder
    from repre.core.runtime import setup_runtime
    from repre.eval.finetune import finetune_eval, new_head

    cfg = tiny_config("model.init=mocov3", "eval.finetune.steps=3", "eval.finetune.train_subset=16",
                      "eval.finetune.batch_size=8", "eval.finetune.test_subset=8")
    torch.manual_seed(0)
    encoder = build_encoder(cfg)
    encoder.freeze_patch_embed()
    assert not encoder.model.pos_embed.requires_grad
    before = copy.deepcopy(encoder.model.state_dict())
    new_head(encoder.model, 10)
    head = encoder.model.get_classifier()
    assert 1e-5 < float(head.weight.detach().std()) < 4e-5 and not head.bias.any()
    finetune_eval(encoder, cfg, setup_runtime(cfg.train))
    after = encoder.model.state_dict()
    for name in ("blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "pos_embed"):
        assert not torch.equal(after[name], before[name]), name


def test_a_distilled_deit_is_fine_tuned_with_both_heads_drawn_and_its_tokens_in_the_first_layer():
    """A distilled DeiT has two heads (class and distillation token), whose logits timm averages:
    `get_classifier()` gives both, and drawing the first failed on the pair ('tuple' object has no attribute
    'weight'). Its distillation token is a token as the class token is: the first layer's lr, not the head's."""
    from conftest import tiny_config
    from repre.builder import build_encoder
    from repre.core.runtime import setup_runtime
    from repre.eval.finetune import finetune_eval, layer_id, new_head

    cfg = tiny_config("model.arch=deit_tiny_distilled_patch16_224", "model.init=timm", "eval.finetune.steps=2",
                      "eval.finetune.train_subset=16", "eval.finetune.batch_size=8", "eval.finetune.test_subset=8")
    encoder = build_encoder(cfg)
    new_head(encoder.model, 10)
    for head in encoder.model.get_classifier():
        assert head.out_features == 10 and float(head.weight.detach().std()) < 4e-5 and not head.bias.any()
    assert layer_id("dist_token", 4) == layer_id("cls_token", 4) == 0
    assert 0 <= finetune_eval(encoder, cfg, setup_runtime(cfg.train))["value"] <= 1


def test_an_eval_out_that_is_a_file_is_refused_before_the_evaluation(tiny_run, tmp_path, monkeypatch):
    """--out naming a file (or a folder under one) exits 2 before any work: the result would be lost after it."""
    import repre.eval

    ran = []
    monkeypatch.setattr(repre.eval, "evaluate", lambda *a, **k: ran.append(a))
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "knn"):
        code, _ = run_cli(["eval", "knn", "--checkpoint", str(tiny_run[0]), "--out", str(out)])
        assert code == 2
    assert not ran


def test_fine_tuning_in_fp16_skips_a_step_whose_gradients_overflow():
    """fp16 fine-tuning scales its loss, so a batch that overflows fp16 skips its step (unscaled, AdamW would turn
    every weight to NaN and the top-1 would be noise)."""
    from repre.core.runtime import Runtime
    from repre.eval.finetune import train_steps

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr_scale": 1.0}])
    views = torch.full((4, 2, 3, 2, 2), 1e6)  # beyond fp16's largest value (65504): inf under autocast
    batch = {"views": views, "label": torch.tensor([0, 1, 0, 1])}
    loss = train_steps(model, opt, iter([batch]), torch.tensor([1e-3]), 0.0,
                       Runtime(device=torch.device("cpu"), precision="fp16"))
    assert not math.isfinite(loss)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])  # the step was skipped: every weight as it was


def test_fine_tuning_steps_each_group_at_the_scheduled_lr_times_its_layer_decay():
    """Each step sets group lr = scheduled lr x lr_scale (MAE util/lr_sched.py:17-18, BEiT's), so a block
    lower in the encoder moves less: the decay's groups alone would change nothing."""
    from repre.core.runtime import Runtime
    from repre.eval.finetune import train_steps

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.Linear(6, 2))
    opt = torch.optim.AdamW([{"params": model[1].parameters(), "lr_scale": 0.25},
                             {"params": model[2].parameters(), "lr_scale": 1.0}], weight_decay=0.0)
    batch = {"views": torch.rand(4, 2, 3, 2, 2), "label": torch.tensor([0, 1, 0, 1])}
    before = [p.detach().clone() for p in model.parameters()]
    train_steps(model, opt, iter([batch]), torch.tensor([0.1]), 0.0, Runtime(device=torch.device("cpu"),
                                                                              precision="fp32"))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * 0.25, 0.1])
    # AdamW's first step moves each weight by lr (its update m / sqrt(v) is the gradient's sign)
    moved = [float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before, strict=True)]
    assert moved[0] == pytest.approx(0.025, rel=1e-3) and moved[2] == pytest.approx(0.1, rel=1e-3)


def test_fp16_loss_scale_stops_at_its_floor_so_a_long_overflow_leaves_the_weights_finite():
    """200 overflowing batches halve the scale 200 times: GradScaler's reaches 0, and the next good batch's
    gradients unscale to NaN past its own overflow check; the scale stops at 1 and that batch trains."""
    from repre.core.runtime import LossScaler, Runtime
    from repre.eval.finetune import train_steps

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr_scale": 1.0}])
    bad = {"views": torch.full((4, 2, 3, 2, 2), 1e6), "label": torch.tensor([0, 1, 0, 1])}
    good = {"views": torch.rand(4, 2, 3, 2, 2), "label": torch.tensor([0, 1, 0, 1])}
    rt = Runtime(device=torch.device("cpu"), precision="fp16")
    loss = train_steps(model, opt, iter([bad] * 200 + [good]), torch.full((201,), 1e-3), 0.0, rt)
    assert math.isfinite(loss)
    weights = model.state_dict()
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not all(torch.equal(weights[k], before[k]) for k in weights)  # the good batch trained
    scaler = LossScaler(rt)
    scaler.current()
    scaler.update(2.0 ** -10)
    assert scaler.get_scale() == LossScaler.FLOOR


def test_an_encoder_whose_outputs_are_not_finite_gives_no_number(tiny_run, tmp_path, capsys):
    """NaN weights vote class 0 for every query: k-NN would report a top-1 that measures nothing (the bank's 64
    images are the first found)."""
    out, _ = tiny_run
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    key = "method.encoder.model.blocks.0.attn.qkv.weight"
    ckpt["model"][key] = torch.full_like(ckpt["model"][key], float("nan"))
    torch.save(ckpt, tmp_path / "nan.pt")
    code, _ = run_cli(["eval", "knn", "--checkpoint", str(tmp_path / "nan.pt")])
    assert code == 2 and "the outputs of 64 of 64 images are not finite" in capsys.readouterr().err


def test_held_out_images_without_a_label_of_the_training_classes_are_refused(tiny_run, image_folder, capsys):
    """A loose file beside val/'s class folders makes the split unlabelled (-1): k-NN and the probe counted each
    query as a wrong class and reported 0.0."""
    import shutil

    out, _ = tiny_run
    shutil.copy(image_folder / "train" / "cat" / "0.png", image_folder / "val" / "stray.png")
    for task in ("knn", "linear"):
        code, _ = run_cli(["eval", task, "--checkpoint", str(out), "--set", "data.name=folder",
                           "--set", f"data.root={image_folder}", "--set", "data.image_size=16"])
        err = capsys.readouterr().err
        assert code == 2 and "the held-out images" in err, err


def test_keys_the_chosen_protocol_or_probe_data_does_not_read_are_refused(tiny_run, capsys):
    """The quick probe's sweep keys under a paper's protocol, a class count for the scenes: each would change
    nothing but the result's folder name. Given with --set only: a run's own config holding them still loads."""
    out, _ = tiny_run
    for task, items, said in (
            ("linear", ["eval.linear.protocol=mocov3", "eval.linear.lrs=[5.0]"], "eval.linear.lrs: read by the quick"),
            ("linear", ["eval.linear.protocol=dino", "eval.linear.val_fraction=0.5"], "eval.linear.val_fraction"),
            ("segment", ["eval.segment.classes=3"], "eval.segment.classes: read with eval.segment.data=folder")):
        code, _ = run_cli(["eval", task, "--checkpoint", str(out), *[a for i in items for a in ("--set", i)]])
        assert code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("arch, units", [("vit_pico_patch4", "blocks"), ("swin_pico_patch2_window4", "stages")])
def test_linear_blocks_out_of_range_names_the_encoder_s_blocks_or_stages(arch, units):
    """A Swin's taps and probe features are its stages: "must be in 1..3" for a 6-block Swin read as a bug."""
    from repre.eval.tokens import check_layout
    from repre.models.backbone import Backbone, resolve_arch

    encoder = Backbone(*resolve_arch(arch, 16, 0.0, {}), name=arch)  # as builder.build_encoder names it
    n = encoder.num_units
    check_layout(encoder, "avg", n)
    with pytest.raises(UserError, match=rf"blocks={n + 1}: the probe reads .*last {n + 1} {units}; {arch} has {n}, "
                                        rf"so give 1 to {n}"):
        check_layout(encoder, "avg", n + 1)


def test_an_evaluation_drawn_again_alike_is_one_point_and_a_resume_s_purge_keeps_it(tmp_path):
    """The same checkpoint evaluated twice drew two points at its step; a run resumed at its last step to redo
    its end purged the TensorBoard events of that step, `repre eval`'s point too (its result.json stayed)."""
    from repre.engine.metrics import MetricWriter, add_evaluation

    (tmp_path / "tb").mkdir()
    result = {"task": "knn", "metric": "top1", "value": 0.625, "checkpoint": {"step": 8, "set": []}}
    assert add_evaluation(tmp_path, result) == "repre_eval/knn_top1"
    assert add_evaluation(tmp_path, result) is None  # nothing added: `repre eval` says nothing of it
    resumed = MetricWriter(tmp_path, after_step=8, end_redone=True)  # a resume that redoes step 8's end
    resumed.write({"step": 8, "kind": "train", "loss": 1.0})
    resumed.close()
    assert tensorboard_series(tmp_path / "tb" / "repre_eval", "repre_eval/knn_top1") == [(8, 0.625)]
    assert tensorboard_series(tmp_path / "tb", "repre_eval/knn_top1") == []  # not among the training's events


def test_checkpoints_evaluated_out_of_step_order_keep_every_point_in_tensorboard(tmp_path):
    """TensorBoard drops a tag's points above a lower step read after them: the last checkpoint evaluated
    before an earlier one lost its point. Every point is drawn again in order, in one file of a run of their
    own, which a resumed run draws again (an older repre drew them among the training's events)."""
    from repre.engine.metrics import EVAL_RUN, MetricWriter, add_evaluation

    tb = tmp_path / "tb"
    tb.mkdir()
    for step, value in ((8, 0.5), (4, 0.25), (6, 0.375)):
        result = {"task": "knn", "metric": "top1", "value": value, "checkpoint": {"step": step, "set": []}}
        assert add_evaluation(tmp_path, result) == "repre_eval/knn_top1"
    everything = [(4, 0.25), (6, 0.375), (8, 0.5)]
    assert tensorboard_series(tb / EVAL_RUN, "repre_eval/knn_top1") == everything
    assert len(list((tb / EVAL_RUN).iterdir())) == 1 and not list(tb.glob(".*lock"))
    for file in (tb / EVAL_RUN).iterdir():
        file.unlink()  # as a run whose points an older repre drew
    MetricWriter(tmp_path, after_step=5).close()
    assert tensorboard_series(tb / EVAL_RUN, "repre_eval/knn_top1") == everything
    result = {"task": "knn", "metric": "top1", "value": 0.125, "checkpoint": {"step": 2, "set": []}}
    assert add_evaluation(tmp_path, result) == "repre_eval/knn_top1"
    assert tensorboard_series(tb / EVAL_RUN, "repre_eval/knn_top1") == [(2, 0.125), *everything]


def test_two_evaluations_ending_together_keep_both_points(tmp_path, monkeypatch):
    """A `repre eval` that finds the points held by another waits for it, then reads what it wrote (without
    the lock each kept its own point alone)."""
    from repre.core import run_lock
    from repre.engine import metrics

    (tmp_path / "tb").mkdir()
    first = {"task": "knn", "metric": "top1", "value": 0.5, "checkpoint": {"step": 8, "set": []}}
    second = {**first, "value": 0.25, "checkpoint": {"step": 4, "set": []}}
    acquire, tries = run_lock.RunLock.acquire, []

    def busy_once(self):  # at the first try another process holds the lock, and adds its point meanwhile
        tries.append(self.path.name)
        if len(tries) == 1:
            metrics.add_evaluation(tmp_path, first)
            return "held by another process"
        return acquire(self)

    monkeypatch.setattr(run_lock.RunLock, "acquire", busy_once)
    assert metrics.add_evaluation(tmp_path, second) == "repre_eval/knn_top1"
    assert tries == [metrics.EVAL_LOCK] * 3  # this one's, the other's, this one's again
    assert tensorboard_series(tmp_path / "tb" / metrics.EVAL_RUN, "repre_eval/knn_top1") == [(4, 0.25), (8, 0.5)]


def test_top1_is_the_exact_fraction():
    """17 of 24 right: 17/24 exactly, as JSON and compare show it (float32's mean: 0.7083333134651184)."""
    from repre.eval.scores import per_class, top1

    pred, truth = torch.tensor([0] * 17 + [1] * 7), torch.zeros(24, dtype=torch.int64)
    assert top1(pred, truth) == 17 / 24
    assert per_class(pred, truth, 2, None)["per_class_top1"] == {"0": 17 / 24, "1": None}
