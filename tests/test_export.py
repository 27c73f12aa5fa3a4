"""`repre export`: timm safetensors that load with the documented call and give the checkpoint's features."""

import json
import shutil

import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import DINO_TINY, SWIN_TINY, TINY, last_json, pretrain_args, run_cli, tiny_config
from repre.exporting import load_export, old_timm_hint
from repre.pretrained import load_encoder

# the documented loading call needs pyproject's timm (older ones load neither ViT nor Swin exports, and
# `repre export` fails its self-check, exit 2); a machine with its own older timm, such as the GPU check's, skips
# these (test_an_old_timm_is_named_with_the_remedy checks the condition)
needs_timm = pytest.mark.skipif(bool(old_timm_hint()), reason=old_timm_hint().lstrip("; "))


def features_agree(run, file, card) -> None:
    encoder, cfg = load_encoder(run)
    size = cfg.data.image_size
    x = torch.randn(3, 3, size, size)
    loaded = load_export(file, card).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), encoder.eval()(x)[0], rtol=1e-5, atol=1e-5)


@needs_timm
def test_vit_export_loads_with_timm_and_matches(tiny_run, tmp_path, repre_log):
    run, _ = tiny_run
    file = tmp_path / "vit.safetensors"
    code, stdout = run_cli(["export", "--checkpoint", str(run), "--out", str(file)])
    assert code == 0, stdout
    card = json.loads(file.with_suffix(".json").read_text())
    assert card["step"] == card["total_steps"] == 20 and "exporting step" not in repre_log.text
    step_10 = run / "checkpoints" / "step-00000010.pt"  # before the run's end: said, and in the card
    assert run_cli(["export", "--checkpoint", str(step_10), "--out", str(tmp_path / "early.safetensors")])[0] == 0
    assert "exporting step 10 of the run's 20" in repre_log.text
    assert last_json(stdout)["arch"] == card["arch"] == "vit_tiny_patch16_224"
    assert card["encoder"] == "encoder" and card["check"]["strict_keys"]
    knn = [e for e in card["evaluations"] if e["task"] == "knn"]
    assert knn and knn == [e for e in last_json(stdout)["evaluations"] if e["task"] == "knn"]
    assert all(0 <= e["value"] <= 1 for e in knn)  # the run's k-NN, from its summary and any `repre eval knn`
    assert "drop_path_rate" not in card["kwargs"] and card["kwargs"]["patch_size"] == 4
    with safe_open(str(file), "pt") as fh:
        assert json.loads(fh.metadata()["repre_card"])["arch"] == card["arch"]
        assert not any(k.startswith(("method.", "head.weight")) for k in fh.keys())
    features_agree(run, file, card)
    size = card["pretrained_cfg"]["input_size"][-1]  # the tiny run's generated images: S x S, taken whole
    loaded = load_export(file, card)
    transform_agrees(loaded, gradients(size, size))
    cfg = loaded.pretrained_cfg  # no hub weights, licence or classes of the architecture it was named after
    assert "hf_hub_id" not in cfg and "license" not in cfg and cfg["num_classes"] == 0 and cfg.get("url") is None


def gradients(height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] of smooth gradients: a wrong crop or size shows, rounding hardly."""
    y, x = np.mgrid[0 : 1 : height * 1j, 0 : 1 : width * 1j]
    return (255 * np.stack([x, y, x * y], axis=-1)).astype(np.uint8)


def transform_agrees(model, pixels: np.ndarray) -> None:
    """timm's own evaluation transform for `model` (`resolve_data_config` reads its `pretrained_cfg`) prepares
    an image as repre's evaluation does: input size, resize and crop, normalization (PIL's resize against
    torchvision's on tensors: equal to within 2 grey levels on average)."""
    from PIL import Image

    from repre.data.evaluation import centre_view
    from repre.data.views import normalize

    config = timm.data.resolve_data_config({}, model=model)
    size = config["input_size"][-1]
    theirs = timm.data.create_transform(**config)(Image.fromarray(pixels))
    view = centre_view(torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), size)
    ours = normalize(view[None].float() / 255, config["mean"], config["std"])[0]
    assert theirs.shape == ours.shape == (3, size, size)
    assert ((theirs - ours).abs() * torch.tensor(config["std"])[:, None, None]).mean() < 2 / 255


@pytest.mark.parametrize("name,size,image,crop_pct", [
    ("folder", 16, (48, 32), 0.875), ("shards", 32, (64, 64), 0.875),  # larger: resized, centre-cropped
    ("synthetic", 16, (16, 16), 1.0), ("fashion-mnist", 28, (28, 28), 1.0),  # no larger than the input: whole
])
def test_an_exported_model_card_prepares_images_as_evaluation(name, size, image, crop_pct):
    """The card's `pretrained_cfg` for each kind of data: images larger than the input resized to
    floor(S / 0.875) and centre-cropped, a dataset of images no larger than the input taken whole; timm's
    transform from it equals repre's evaluation on an image of that dataset's size."""
    from repre.data.evaluation import timm_preprocessing

    cfg = tiny_config(f"data.name={name}", f"data.image_size={size}")
    pre = timm_preprocessing(cfg.data)
    assert pre["crop_pct"] == crop_pct and pre["input_size"] == [3, size, size]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=size, patch_size=4,
                              embed_dim=32, depth=1, num_heads=2, pretrained_cfg_overlay=pre)
    transform_agrees(model, gradients(*image))


@needs_timm
@pytest.mark.parametrize("size,crop_pct", [(24, 1.0), (16, 0.875)])
def test_a_folder_run_s_card_prepares_its_own_images_as_evaluation(image_folder, tmp_path, repre_log, size,
                                                                    crop_pct):
    """A folder's crop is chosen on a sample of its evaluation images (20 x 24 px): no larger than the input (24)
    they are resized whole, as `repre embed` reads them (a 0.875 crop would cut their border); larger (16), cut
    to 0.875 of the short side. The check runs timm's transform from the card on those images. Where the data
    is gone, the card follows the data's kind, unchecked."""
    run, out = tmp_path / "run", tmp_path / "vit.safetensors"
    assert run_cli(pretrain_args(run, "data.name=folder", f"data.root={image_folder}", f"data.image_size={size}",
                                 "train.max_steps=2", "eval.knn.enabled=false"))[0] == 0
    assert run_cli(["export", "--checkpoint", str(run), "--out", str(out)])[0] == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["pretrained_cfg"]["crop_pct"] == crop_pct and card["check"]["transform_images"] == 12
    recipe = card["config"]  # how it was trained, the training machine's path left out
    assert recipe["train"]["max_steps"] == 2 and recipe["data"]["image_size"] == size
    assert recipe["data"]["root"] == "(a path)" and str(image_folder) not in json.dumps(card)
    assert card["check"]["transform_max_diff_grey_levels"] < 2 and "otherwise than" not in repre_log.text
    shutil.rmtree(image_folder / "val")  # no held-out images: the crop is chosen on the training images
    assert run_cli(["export", "--checkpoint", str(run), "--out", str(out)])[0] == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["pretrained_cfg"]["crop_pct"] == crop_pct and card["check"]["transform_images"] == 16
    assert "cannot be read here" not in repre_log.text
    image_folder.rename(tmp_path / "moved")
    assert run_cli(["export", "--checkpoint", str(run), "--out", str(out)])[0] == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["pretrained_cfg"]["crop_pct"] == 0.875 and card["check"]["transform_images"] == 0
    assert "evaluation images cannot be read here" in repre_log.text


def test_the_transform_check_says_when_the_card_prepares_some_images_otherwise(repre_log):
    """Images no larger than the input agree with a crop_pct 1 card within the resizes' rounding; one larger,
    which repre cuts to 0.875 of its short side, differs beyond it, and the export says so."""
    from repre.data.evaluation import timm_preprocessing
    from repre.exporting import TRANSFORM_TOLERANCE, transform_check

    cfg = tiny_config("data.name=folder", "data.image_size=16")
    small = [torch.from_numpy(gradients(side, side + 4)).permute(2, 0, 1).contiguous() for side in (12, 16)]
    pre = timm_preprocessing(cfg.data, [12, 16])
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=4,
                              embed_dim=32, depth=1, num_heads=2, pretrained_cfg_overlay=pre)
    card = {"pretrained_cfg": pre, "data": {"image_size": 16}}
    assert pre["crop_pct"] == 1.0
    assert transform_check(model, card, small)["transform_max_diff_grey_levels"] < TRANSFORM_TOLERANCE
    assert "otherwise than" not in repre_log.text
    large = torch.from_numpy(gradients(64, 64)).permute(2, 0, 1).contiguous()
    assert transform_check(model, card, [*small, large])["transform_max_diff_grey_levels"] > TRANSFORM_TOLERANCE
    assert "prepares some of 3 of the run's images otherwise than repre's evaluation" in repre_log.text
    assert "use `repre embed` or bring the images to one side of either kind" in repre_log.text  # what to do


@needs_timm
def test_mocov3_vit_export_loads_with_timm_and_keeps_its_fixed_position_embedding(tmp_path):
    """model.init=mocov3 (the MoCo v3 presets' ViT) trains with its sin-cos embedding frozen; the export is a plain
    timm ViT that loads with the documented call and carries that embedding."""
    from repre.models.mocov3_vit import sincos_2d

    args = ["pretrain", "--out", str(tmp_path / "m")]
    for item in TINY + ["model.init=mocov3", "method.mocov3.freeze_patch_embed=true", "train.max_steps=2",
                        "eval.knn.enabled=false"]:
        args += ["--set", item]
    assert run_cli(args)[0] == 0
    file = tmp_path / "vit.safetensors"
    assert run_cli(["export", "--checkpoint", str(tmp_path / "m"), "--out", str(file)])[0] == 0
    card = json.loads(file.with_suffix(".json").read_text())
    assert card["init"] == "mocov3"  # export.md: such an export loads at its own size, which the card must say
    features_agree(tmp_path / "m", file, card)
    loaded = load_export(file, card)
    torch.testing.assert_close(loaded.pos_embed.detach(), sincos_2d((4, 4), 32))  # 16 px, patch 4, 32-d


@needs_timm
def test_swin_export_loads_with_timm_and_matches(tmp_path):
    args = ["pretrain", "--out", str(tmp_path / "s")]
    for item in TINY + SWIN_TINY + ["train.max_steps=2", "eval.knn.enabled=false"]:
        args += ["--set", item]
    assert run_cli(args)[0] == 0
    file = tmp_path / "swin.safetensors"
    assert run_cli(["export", "--checkpoint", str(tmp_path / "s"), "--out", str(file)])[0] == 0
    card = json.loads(file.with_suffix(".json").read_text())
    assert card["arch"].startswith("swin_") and card["method"] == "moby"
    features_agree(tmp_path / "s", file, card)


@needs_timm
def test_dino_exports_the_teacher_unless_told(tmp_path):
    args = ["pretrain", "--out", str(tmp_path / "d")]
    for item in TINY + DINO_TINY + ["train.max_steps=3", "eval.knn.enabled=false"]:
        args += ["--set", item]
    assert run_cli(args)[0] == 0
    teacher, online = tmp_path / "t.safetensors", tmp_path / "o.safetensors"
    assert run_cli(["export", "--checkpoint", str(tmp_path / "d"), "--out", str(teacher)])[0] == 0
    argv = ["export", "--checkpoint", str(tmp_path / "d"), "--out", str(online), "--encoder", "encoder"]
    assert run_cli(argv)[0] == 0
    cards = [json.loads(f.with_suffix(".json").read_text()) for f in (teacher, online)]
    assert [c["encoder"] for c in cards] == ["teacher_encoder", "encoder"]
    a, b = (load_export(f, c).state_dict() for f, c in zip((teacher, online), cards, strict=True))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # after 3 steps the student has moved off the teacher


@pytest.mark.parametrize("out,encoder,message", [
    ("x.pt", None, "must end in .safetensors"),
    ("x.safetensors", "no_such_encoder", "has no 'no_such_encoder'"),
    ("d.safetensors", None, "is a folder; give a file's path, such as"),  # it was "holds other weights"
    ("c.safetensors", None, "where the card goes, is a folder"),
])
def test_export_errors_are_clear(tiny_run, tmp_path, capsys, out, encoder, message):
    run, _ = tiny_run
    (tmp_path / "d.safetensors").mkdir()
    (tmp_path / "c.json").mkdir()
    argv = ["export", "--checkpoint", str(run), "--out", str(tmp_path / out),
            *(["--encoder", encoder] if encoder else [])]
    assert run_cli(argv)[0] == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / out).is_file()


def test_a_failed_self_check_leaves_the_earlier_export_and_no_temporary(tiny_run, tmp_path, monkeypatch):
    """The weights and the card are replaced only once the export loads as documented: a check that fails leaves
    the folder as it was."""
    import repre.exporting

    run, _ = tiny_run
    out = tmp_path / "encoder.safetensors"
    out.write_bytes(b"an earlier export")
    out.with_suffix(".json").write_text("{}")

    def fails(*args):
        raise repre.exporting.UserError("the exported features differ")

    monkeypatch.setattr(repre.exporting, "self_check", fails)
    assert run_cli(["export", "--checkpoint", str(run), "--out", str(out), "--overwrite"])[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.json", "encoder.safetensors"]
    assert out.read_bytes() == b"an earlier export" and out.with_suffix(".json").read_text() == "{}"


def test_an_export_replaces_only_an_export_of_the_same_weights(tiny_run, tmp_path, capsys):
    """The same checkpoint and encoder again (a card with newer results) replaces the files; other weights, or
    files repre did not write, need --overwrite, and are left as they were without it."""
    run, _ = tiny_run
    out = tmp_path / "vit.safetensors"

    def export(checkpoint, *extra: str) -> int:
        return run_cli(["export", "--checkpoint", str(checkpoint), "--out", str(out), *extra])[0]

    assert export(run) == 0 and export(run / "checkpoints" / "step-00000020.pt") == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["checkpoint"]["file"] == "step-00000020.pt" and len(card["checkpoint"]["sha256"]) == 64
    before = out.read_bytes()
    assert export(run / "checkpoints" / "step-00000010.pt") == 2
    said = capsys.readouterr().err  # the two files' names could be the same (two runs' step files): their digests
    assert (f"holds the encoder of step-00000020.pt (sha256 {card['checkpoint']['sha256'][:12]}; these weights: "
            "encoder of step-00000010.pt, sha256 ") in said and "give another --out, or --overwrite" in said
    assert out.read_bytes() == before
    assert export(run / "checkpoints" / "step-00000010.pt", "--overwrite") == 0
    assert json.loads(out.with_suffix(".json").read_text())["checkpoint"]["file"] == "step-00000010.pt"
    out.with_suffix(".json").unlink()  # an export stopped between its renames: the weights' own card decides
    assert export(run / "checkpoints" / "step-00000010.pt") == 0
    save_file({"w": torch.zeros(1)}, str(out))  # weights repre did not export
    assert export(run / "checkpoints" / "step-00000010.pt") == 2  # no card: not known to be these weights
    assert f"{out} exists and holds other weights (no card of a repre export" in capsys.readouterr().err
    out.unlink()
    out.with_suffix(".json").write_text("{}")  # a stray file of the card's name, beside no weights
    assert export(run / "checkpoints" / "step-00000010.pt") == 2
    assert f"{out.with_suffix('.json')} exists and holds another file" in capsys.readouterr().err


def test_the_card_names_the_runs_results_however_its_checkpoint_is_given(tiny_run, tmp_path, monkeypatch):
    """A run's checkpoints/ folder, and last.pt given from inside it, are the run: their cards carry its k-NN."""
    run, _ = tiny_run
    cards = []
    for given in (run, run / "checkpoints", "last.pt"):
        monkeypatch.chdir(run / "checkpoints" if given == "last.pt" else tmp_path)
        out = tmp_path / "e.safetensors"
        assert run_cli(["export", "--checkpoint", str(given), "--out", str(out), "--overwrite"])[0] == 0
        cards.append(json.loads(out.with_suffix(".json").read_text())["evaluations"])
    assert cards[0][0]["from"] == "pretrain" and cards[1] == cards[2] == cards[0]


def test_a_run_without_a_checkpoint_yet_is_named_so(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("preset: x\n")
    for command in (["export", "--out", str(tmp_path / "x.safetensors")], ["embed", "--out", str(tmp_path / "x.npy")]):
        assert run_cli([*command, "--checkpoint", str(tmp_path / "run")])[0] == 2
        assert "run is a run without a checkpoint yet" in capsys.readouterr().err


def test_an_export_stopped_by_sigterm_leaves_no_temporary_file(tiny_run, tmp_path):
    """A scheduler's or `timeout`'s SIGTERM stops an export as Ctrl-C does: exit 3, the folder as it was."""
    import signal
    import subprocess
    import sys

    run, _ = tiny_run
    code = ("import sys, time, repre.exporting as e\n"
            "e.self_check = lambda *a: (print('checking', flush=True), time.sleep(60))\n"
            "from repre.cli import main\n"
            f"sys.exit(main(['export', '--checkpoint', {str(run)!r}, '--out', {str(tmp_path / 'e.safetensors')!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "checking\n"  # the weights are written to their temporary file
    assert any(tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 3 and "repre: interrupted" in proc.stderr.read()
    assert list(tmp_path.iterdir()) == []


def test_an_old_timm_is_named_with_the_remedy(monkeypatch):
    monkeypatch.setattr(timm, "__version__", "1.0.29")
    assert "timm 1.0.29 is installed" in old_timm_hint() and "needs >= 1.0.31 (pip install -U timm)" in old_timm_hint()
    monkeypatch.setattr(timm, "__version__", "1.0.31")
    assert old_timm_hint() == ""


def test_the_card_carries_only_the_results_of_the_exported_checkpoint(tmp_path):
    from repre.exporting import run_evaluations

    (tmp_path / "summary.json").write_text(json.dumps({"steps": 20, "knn_top1": 0.7}))
    given = ["eval.knn.test_subset=100", "data.root=/home/me/photos"]
    for task, step, key, value in [("knn/step-00000010", 10, "encoder", 0.5), ("linear", 20, "encoder", 0.6),
                                   ("segment", 20, "momentum_encoder", 0.2), ("finetune", 20, None, 0.3)]:
        folder = tmp_path / "eval" / task  # an earlier checkpoint's result in its own folder (`eval_dir`)
        task = task.split("/")[0]
        folder.mkdir(parents=True)
        of = {"step": step, "encoder": key, "set": given} if key else None
        folder.joinpath("result.json").write_text(json.dumps({"task": task, "metric": "top1", "value": value,
                                                             **({"checkpoint": of} if of else {})}))
    named = ["eval.knn.test_subset=100", "data.root=(a path)"]  # what was set, without the user's paths
    cfg = tiny_config("eval.knn.train_subset=40")  # the run's k-NN: on a subset of the bank
    evals = run_evaluations(tmp_path, 20, "encoder", cfg)
    assert evals == [{"task": "knn", "metric": "top1", "value": 0.7, "from": "pretrain",  # not step 10's eval
                      "settings": ["eval.knn.train_subset=40"]},
                     {"task": "linear", "metric": "top1", "value": 0.6, "from": "repre eval", "set": named,
                      "settings": []}]
    # `repre eval knn` measured with the run's own subset of the bank too, which its --set did not change: said
    # beside the --set (a card that showed the --set alone passed it for the whole bank's k-NN)
    assert run_evaluations(tmp_path, 10, "encoder", cfg) == [
        {"task": "knn", "metric": "top1", "value": 0.5, "from": "repre eval", "set": named,
         "settings": ["eval.knn.train_subset=40"]}]
    assert run_evaluations(tmp_path, 10, "encoder", tiny_config("eval.knn.test_subset=40"))[0]["settings"] == []
    from repre.exporting import task_settings

    assert task_settings(cfg, "knn", ["eval.knn={train_subset: 20}"]) == []  # a section given whole
    val = tiny_config("eval.knn.train_subset=40", "eval.split=val", "eval.val_size=16")
    assert task_settings(val, "knn") == ["eval.knn.train_subset=40", "eval.split=val", "eval.val_size=16"]
    assert task_settings(val, "knn", ["eval.split=test"]) == ["eval.knn.train_subset=40"]
    assert [e["task"] for e in run_evaluations(tmp_path, 20, "momentum_encoder", cfg)] == ["segment"]
    (tmp_path / "eval" / "knn" / "result.json").write_text(json.dumps(
        {"task": "knn", "metric": "top1", "value": 0.55,
         "checkpoint": {"step": 20, "encoder": "encoder", "set": given}}))
    assert [(e["task"], e["value"], e["from"]) for e in run_evaluations(tmp_path, 20, "encoder", cfg)] == [
        ("knn", 0.7, "pretrain"), ("knn", 0.55, "repre eval"), ("linear", 0.6, "repre eval")]  # a subset's k-NN beside


@needs_timm
@pytest.mark.parametrize("arch,kwargs", [
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}),
    ("swin_tiny_patch4_window7_224", {"img_size": 32, "window_size": 4, "embed_dim": 16, "depths": (1, 1),
                                      "num_heads": (1, 2)}),
])
def test_the_kwargs_an_export_leaves_out_change_no_feature(arch, kwargs):
    """The card leaves TRAINING_ONLY_KWARGS out: each changes timm's model in training only, so the exported
    weights give the same features without it."""
    from repre.exporting import TRAINING_ONLY_KWARGS

    torch.manual_seed(0)
    plain = timm.create_model(arch, num_classes=0, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    for key in TRAINING_ONLY_KWARGS:
        try:
            model = timm.create_model(arch, num_classes=0, **kwargs, **{key: 0.5}).eval()
        except TypeError:  # an architecture without this rate
            continue
        model.load_state_dict(plain.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(model(x), plain(x))



def test_weights_that_do_not_fit_timm_s_model_are_named_by_their_keys(monkeypatch, tmp_path):
    import timm

    import repre.exporting as exporting

    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                              num_classes=0)
    state = dict(model.state_dict())
    del state["pos_embed"]
    state.update({f"extra.{i}": torch.zeros(1) for i in range(5)})
    monkeypatch.setattr(exporting, "load_export", lambda file, card: model)
    with pytest.raises(exporting.UserError, match=r"do not fit timm's vit_tiny_patch16_224, so nothing was "
                                                  r"written: the export lacks pos_embed and has more extra.0, "
                                                  r"extra.1, extra.2 and 2 more"):
        exporting.self_check(tmp_path / "unused", {"arch": "vit_tiny_patch16_224", "kwargs": {}}, state, model, [])
    card = {"arch": "vit_tiny_patch16_224", "kwargs": {"img_size": 16}}
    for lacking in ({"pos_embed"}, set()):  # each side alone fails: a key missing, a key more
        state = {k: v for k, v in model.state_dict().items() if k not in lacking}
        if not lacking:
            state["extra.0"] = torch.zeros(1)
        with pytest.raises(exporting.UserError, match="lacks pos_embed" if lacking else "has more extra.0"):
            exporting.self_check(tmp_path / "unused", card, state, model, [])


def test_an_export_whose_features_differ_from_the_checkpoint_s_is_refused(monkeypatch, tmp_path):
    """The same keys are not enough: timm's model built from the file must give the checkpoint encoder's
    features (a timm that builds the architecture otherwise gives others)."""
    import copy

    import timm

    import repre.exporting as exporting

    reference = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1,
                                  num_heads=2, num_classes=0)
    other = copy.deepcopy(reference)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    card = {"arch": "vit_tiny_patch16_224", "kwargs": {"img_size": 16}}
    state = reference.state_dict()
    monkeypatch.setattr(exporting, "load_export", lambda file, card: copy.deepcopy(reference))
    assert exporting.self_check(tmp_path / "unused", card, state, reference, [])["max_rel_feature_diff"] == 0
    monkeypatch.setattr(exporting, "load_export", lambda file, card: other)
    with pytest.raises(exporting.UserError, match=r"the loaded export's features differ from the checkpoint's by "
                                                  r"\d\.\d\de-\d\d \(relative\), so nothing was written"):
        exporting.self_check(tmp_path / "unused", card, state, reference, [])


def test_a_pickle_of_other_objects_is_no_checkpoint_in_words_that_do_not_advise_unsafe_loading(tmp_path, capsys):
    """torch's message, cut at 200 characters, kept its advice (weights_only=False: run the file's code) and lost
    its reason."""
    import pickle

    with open(tmp_path / "p.pkl", "wb") as fh:
        pickle.dump({"a": 1}, fh, protocol=4)
    assert run_cli(["export", "--checkpoint", str(tmp_path / "p.pkl"),
                    "--out", str(tmp_path / "o.safetensors")])[0] == 2
    said = capsys.readouterr().err
    assert "is no file of tensors and plain values that torch.save wrote, which alone open safely" in said
    assert "(Unsupported operand 149)" in said and "weights_only" not in said and "Warning" not in said
