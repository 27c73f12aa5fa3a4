import errno
import json
import math
import os
import time
import types

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from conftest import TINY, last_json, pretrain_args, run_cli, tiny_config
from repre import __version__
from repre.cli import main
from repre.errors import UserError


def replace_command(monkeypatch, name: str, handler) -> None:
    """What runs command `name` (its parser stays), for the rest of the test."""
    from repre.cli import commands

    monkeypatch.setitem(commands.RUN, name, handler)


def test_run_writes_every_output_of_the_contract(tiny_run):
    out, summary = tiny_run
    assert summary["completed"] and summary["steps"] == 20
    for key in ("wall_s", "images_per_sec", "loss", "loss_contrastive", "loss_recon", "knn_top1", "checkpoint",
                "skipped_images", "versions"):
        assert key in summary
    assert 0.0 <= summary["knn_top1"] <= 1.0
    assert set(summary["versions"]) >= {"repre", "torch", "timm", "git"}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "config.yaml").is_file() and (out / "recon.png").is_file()
    assert any((out / "tb").iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    (config,) = events.Tensors("config/text_summary")  # the run's config, in TensorBoard's text tab
    assert "batch_size" in config.tensor_proto.string_val[0].decode()
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    pts = ["last.pt", "step-00000010.pt", "step-00000020.pt"]
    assert names == sorted(pts + [f"{n}.sha256" for n in pts])  # each with its checksum sidecar
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    for r in train:
        assert {"loss", "loss_contrastive", "loss_recon", "lr", "momentum", "grad_norm", "images_per_sec"} <= set(r)
        assert r["loss_recon"] > 0
    evals = [r for r in lines if "knn_top1" in r]
    assert [(r["kind"], r["step"], r["knn_quick"]) for r in evals] == [("eval", 10, True), ("eval", 20, False)]
    diag = [r for r in train if "diag_grad_cosine" in r]
    assert [r["step"] for r in diag] == [10, 20]
    assert all(-1 <= r["diag_grad_cosine"] <= 1 and r["diag_grad_norm_recon"] > 0 for r in diag)


def test_checkpoint_loads_with_weights_only(tiny_run):
    out, _ = tiny_run
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 20 and ckpt["config"]["train"]["max_steps"] == 20
    assert any(k.startswith("method.momentum_encoder.") for k in ckpt["model"])


def test_eval_knn_accepts_the_checkpoint(tiny_run):
    out, summary = tiny_run
    code, stdout = run_cli(["eval", "knn", "--checkpoint", str(out)])
    result = last_json(stdout)
    assert code == 0 and result["task"] == "knn" and result["metric"] == "top1"
    assert result["value"] == pytest.approx(summary["knn_top1"])
    assert (out / "eval" / "knn" / "result.json").is_file()
    code, stdout = run_cli(["eval", "knn", "--checkpoint", str(out / "checkpoints" / "step-00000010.pt"),
                            "--out", str(out / "e10")])
    assert code == 0 and 0 <= last_json(stdout)["value"] <= 1


def test_eval_refuses_a_foreign_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    assert run_cli(["eval", "knn", "--checkpoint", str(tmp_path / "other.pt")])[0] == 2
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert run_cli(["eval", "knn", "--checkpoint", str(tmp_path / "junk.pt")])[0] == 2
    assert run_cli(["eval", "knn", "--checkpoint", str(tmp_path / "missing.pt")])[0] == 2


def test_eval_refuses_a_mismatched_checkpoint(tiny_run, capsys):
    out, _ = tiny_run
    code, _ = run_cli(["eval", "knn", "--checkpoint", str(out), "--set", "model.kwargs.embed_dim=64"])
    assert code == 2
    assert "does not match" in capsys.readouterr().err


def test_a_removed_key_given_with_a_checkpoint_is_the_persons_not_the_runs(tiny_run):
    """--set on a checkpoint's config is what a person wrote: a removed key is named as removed (the run's own
    config migrates before it)."""
    from repre.pretrained import load_checkpoint_config

    out, _ = tiny_run
    with pytest.raises(UserError, match="config key 'data.scene_size' was removed in repre 0.2.0"):
        load_checkpoint_config(out / "checkpoints" / "last.pt", ["data.scene_size=48"])


def test_eval_refuses_settings_it_would_not_read(tiny_run, capsys):
    """A pre-training key given to an evaluation would change nothing: refused, naming it and what is read."""
    from repre.config import reads
    from repre.eval import eval_reads
    from repre.pretrained import refuse_unread

    out, _ = tiny_run
    code, _ = run_cli(["eval", "knn", "--checkpoint", str(out), "--set", "train.lr=1", "--set", "eval.knn.k=5"])
    err = capsys.readouterr().err
    assert code == 2 and "--set train.lr: not read by `repre eval knn`" in err and "eval.*, data.*" in err
    given = ["aug.hflip=0", "method.mocov3.temperature=1", "train.seed=3", "data.subset=8", "model.kwargs={depth: 2}"]
    with pytest.raises(UserError, match=r"--set aug.hflip, method.mocov3.temperature, data.subset: not read by `repre "
                                         r"eval knn` .*; it reads eval.\*, data.\* \(not subset, device_stages, "):
        refuse_unread("repre eval knn", given, eval_reads("knn"))  # data.subset: the pre-training's images
    for command, read in (("repre embed", reads.EMBED), ("repre neighbors", reads.IMAGES)):  # embed's images
        refuse_unread(command, ["data.subset=8", "data.root=/x"], read)
    refuse_unread("repre eval finetune", ["aug.hflip=0", "train.device=cpu"], eval_reads("finetune"))
    with pytest.raises(UserError, match=r"--set aug.hflip: not read by `repre eval linear`"):  # its protocols' own
        refuse_unread("repre eval linear", ["aug.hflip=0"], eval_reads("linear"))
    with pytest.raises(UserError, match=r"--set recon.norm_pix: not read by `repre eval recon`"):  # the decoder is
        refuse_unread("repre eval recon", ["recon.norm_pix=false"], eval_reads("recon"))  # measured as it trained
    refuse_unread("repre eval knn", ["trian.device=cpu"], eval_reads("knn"))  # no key: the config names the nearest
    code, _ = run_cli(["eval", "knn", "--checkpoint", str(out), "--set", "train.devic=cpu"])
    assert code == 2 and "did you mean 'train.device'" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"--set recon.upsample, train.max_steps: not read"):
        refuse_unread("repre eval recon", ["recon.upsample=nearest", "train.max_steps=3"], eval_reads("recon"))
    code, _ = run_cli(["eval", "knn", "--checkpoint", str(out), "--set", "eval.linear.epochs=5"])  # another task's
    assert code == 2 and ("--set eval.linear.epochs: another evaluation's, not read by `repre eval knn`"
                          in capsys.readouterr().err)
    code, _ = run_cli(["eval", "knn", "--checkpoint", str(out), "--set", "eval.knn.enabled=false"])
    assert code == 2 and "eval.knn.enabled: read by pre-training alone" in capsys.readouterr().err
    code, _ = run_cli(["eval", "knn", "--checkpoint", str(out), "--set", "eval.knn.quick_train=5"])  # its k-NN's
    assert code == 2 and ("eval.knn.quick_train: read by pre-training alone (its k-NN every train.eval_every); "
                          "`repre eval knn` reads eval.knn.train_subset") in capsys.readouterr().err
    code, _ = run_cli(["eval", "knn", "--checkpoint", str(out), "--set", "model.drop_path=0.1"])  # frozen
    assert code == 2 and "model.drop_path: read by fine-tuning alone" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"--set recon.norm_pix: not read by `repre show`"):  # drawn as it trained
        refuse_unread("repre show", ["recon.norm_pix=false"], reads.SHOW)


def test_help_lists_the_keys_a_command_reads(capsys):
    """--help of a command that loads a checkpoint lists what `refuse_unread` lets through, from the same table;
    a key its section holds is not listed twice."""
    from repre.config import reads

    data = "data.* (not subset, device_stages, shuffle_block, stream_size, local_crops, local_size)"  # pre-training's
    assert reads.listed(("data.", "method.", "method.name", "train.seed")) == f"{data}, method.*, train.seed"
    assert reads.listed(("data.", "data.subset")) == ("data.* (not device_stages, shuffle_block, stream_size, "
                                                      "local_crops, local_size)")
    assert reads.listed(("eval.", "eval.knn.", "eval.split")) == "eval.*"
    with pytest.raises(SystemExit):
        main(["show", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert reads.listed(reads.SHOW) in text and "method.name" not in text and "eval.batch_size" not in text


def test_the_options_choices_are_the_librarys():
    """The parser imports no torch (--help stays fast), so it spells the choices the library checks: the same."""
    from repre.cli.parser import build
    from repre.use.embed import SPLITS
    from repre.use.embedding_map import METHODS

    def choices(command: str, option: str) -> tuple:
        actions = build().commands[command]._actions
        return tuple(next(a for a in actions if option in a.option_strings).choices)

    assert choices("map", "--method") == METHODS and choices("embed", "--split") == SPLITS


def test_each_command_has_options_and_a_runner():
    from repre.cli import commands, parser

    assert list(parser.ADD) == list(commands.RUN) == list(parser.build().commands)


def test_eval_prints_each_class_under_its_table():
    from repre.cli.commands import _per_class

    assert _per_class({"per_class_top1": {"Coat": 0.5, "Bag": None}}) == "per class (top-1): Coat 0.500, Bag -"
    assert _per_class({"per_class_iou": {"background": 0.9, "Coat": 0.25}}) == (
        "per class (IoU): background 0.900, Coat 0.250")
    assert _per_class({"per_class_top1": {str(c): 0.1 for c in range(21)}}) == ""  # too many for a line
    # a mask folder's labels 0, 3, 7, 25: 26 outputs, 22 of them labels the masks skip
    sparse = {str(c): (0.5 if c in (0, 3, 7, 25) else None) for c in range(26)}
    assert _per_class({"per_class_iou": sparse}) == "per class (IoU): 0 0.500, 3 0.500, 7 0.500, 25 0.500"
    assert _per_class({"k": 20}) == ""


def test_an_option_the_command_lacks_is_that_commands_error_with_the_nearest(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["pretrain", "--confg", "fmnist-mocov3"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("usage: repre pretrain")
    assert "repre pretrain: error: unrecognized arguments: --confg fmnist-mocov3; did you mean --config?" in err
    with pytest.raises(SystemExit):  # as other tools name it
        main(["pretrain", "--preset", "fmnist-dino"])
    assert "unrecognized arguments: --preset fmnist-dino; did you mean --config?" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # before the command: the top level's
        main(["--confg", "pretrain"])
    assert capsys.readouterr().err.startswith("usage: repre [-h]")
    with pytest.raises(SystemExit):  # it said "invalid choice: 'a=1'"
        main(["--set", "a=1", "config"])
    assert "repre: error: --set goes after the command: repre config --set ..." in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no nearest for an option far from every one (--out is not --set)
        main(["config", "--out", "x"])
    assert capsys.readouterr().err.strip().endswith("unrecognized arguments: --out x")


def test_eval_help_names_each_tasks_quicker_keys_and_they_exist(capsys):
    """`repre eval --help` names, for each task, the keys that make it quicker: each is a config key."""
    import re

    from repre.config import EVAL_TASKS, Config
    from repre.config.loading import flatten

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    named = set(re.findall(r"eval\.[a-z]+\.[a-z_]+", text))
    assert named and named <= set(flatten(Config().to_dict()))
    assert {key.split(".")[1] for key in named} == set(EVAL_TASKS)


def test_an_output_that_cannot_be_written_is_refused_before_the_work(tiny_run, tmp_path, capsys, monkeypatch):
    """A file where --out needs a folder: eval, show (and the commands that write a file) exit 2 before they
    compute anything; pretrain, and an error of the filesystem met later, say which path and why (exit 2)."""

    run, _ = tiny_run
    (tmp_path / "afile").write_text("")
    import repre.eval
    import repre.use.show

    monkeypatch.setattr(repre.eval, "evaluate", lambda *args: pytest.fail("the work began"))
    monkeypatch.setattr(repre.use.show, "show", lambda *args: pytest.fail("the work began"))
    for argv in (["eval", "knn", "--checkpoint", str(run), "--out", str(tmp_path / "afile" / "sub")],
                 ["show", "--checkpoint", str(run), "--out", str(tmp_path / "afile" / "s.png")]):
        assert run_cli(argv)[0] == 2
        assert f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    with monkeypatch.context() as m:  # a read-only mount (os.access says "not writable" there too): named so
        m.setattr(os, "statvfs", lambda path: types.SimpleNamespace(f_flag=os.ST_RDONLY))
        assert run_cli(["show", "--checkpoint", str(run), "--out", str(tmp_path / "ro" / "s.png")])[0] == 2
        said = capsys.readouterr().err
        assert f"--out {tmp_path / 'ro' / 's.png'}: {tmp_path} is on a read-only filesystem" in said, said
    assert run_cli(pretrain_args(tmp_path / "afile" / "run"))[0] == 2
    assert f"cannot use {tmp_path / 'afile' / 'run'}: Not a directory" in capsys.readouterr().err

    def refused(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/shared/runs")

    replace_command(monkeypatch, "config", refused)
    assert run_cli(["config"])[0] == 2
    assert "cannot use /srv/shared/runs: Permission denied; give another path" in capsys.readouterr().err

    def renamed(args):  # os.replace of a finished temporary file over its target: the target named
        raise IsADirectoryError(errno.EISDIR, "Is a directory", "/w/.v.12.tmp.safetensors", None, "/w/v.safetensors")

    def full(args):  # a write to a full disk names no file: the command's --out is named
        raise OSError(errno.ENOSPC, "No space left on device")

    def written(args):  # the temporary file beside the target could not be made: the target named
        raise PermissionError(errno.EACCES, "Permission denied", "/w/.v.12.tmp.safetensors")

    for error in (renamed, written):
        replace_command(monkeypatch, "export", error)
        assert run_cli(["export", "--checkpoint", "x", "--out", str(tmp_path / "v.safetensors")])[0] == 2
        assert "cannot use /w/v.safetensors: " in capsys.readouterr().err
    replace_command(monkeypatch, "embed", full)
    assert run_cli(["embed", "--checkpoint", "x", "--out", str(tmp_path / "e.npy")])[0] == 2
    assert f"cannot write {tmp_path / 'e.npy'}: No space left on device; free space there" in capsys.readouterr().err


def test_a_full_disk_in_export_and_embed_exits_2_and_leaves_no_half_file(tiny_run, tmp_path, monkeypatch, capsys):
    """safetensors raises its own error for a failed write, and a write into embed's memory-mapped rows on a
    full disk would kill the process (SIGBUS): both come out as the full-disk message, exit 2, no file left."""
    import safetensors.torch
    from safetensors import SafetensorError

    run, _ = tiny_run

    def no_space(*args, **kw):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    assert run_cli(["export", "--checkpoint", str(run), "--out", str(tmp_path / "v.safetensors")])[0] == 2
    assert f"cannot write {tmp_path / 'v.safetensors'}: No space left on device" in capsys.readouterr().err

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert run_cli(["embed", "--checkpoint", str(run), "--out", str(tmp_path / "e.npy")])[0] == 2
    assert f"cannot write {tmp_path / 'e.npy'}: No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="a folder that takes no new file: Linux's /proc")
def test_an_out_where_no_file_can_be_made_exits_2(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    assert run_cli(["show", "--checkpoint", str(run), "--out", "/proc/x.png"])[0] == 2
    assert "cannot write /proc/x.png: no file can be made there" in capsys.readouterr().err


def test_out_not_empty_without_resume(tiny_run, capsys):
    out, _ = tiny_run
    assert run_cli(pretrain_args(out))[0] == 2
    assert "holds a run; add --resume" in capsys.readouterr().err


def test_out_inside_the_image_folder_is_refused_before_anything_is_written(image_folder, tmp_path, capsys):
    """Every image under the folders read is read: a run there trained on its own recon.png from a resume on
    (and, in a folder of classes, on a class of them), and lost its exact resume to the count that changed."""
    import shutil

    flat = tmp_path / "flat"
    shutil.copytree(image_folder / "train" / "cat", flat)
    for root, out, read in ((image_folder, image_folder / "train" / "cat" / "x", image_folder / "train"),
                            (image_folder, image_folder / "val" / "x", image_folder / "val"),
                            (flat, flat / "runs" / "x", flat), (flat, flat, flat)):
        for resume in ([], ["--resume"]):
            assert run_cli(pretrain_args(out, "data.name=folder", f"data.root={root}") + resume)[0] == 2
            assert f"--out {out} is inside {read}, whose every image" in capsys.readouterr().err
    assert not (image_folder / "train" / "cat" / "x").exists() and not (flat / "runs").exists()
    elsewhere = tmp_path / "elsewhere"  # a class folder that is a link to another place: read there too
    shutil.move(image_folder / "train" / "dog", elsewhere)
    (image_folder / "train" / "dog").symlink_to(elsewhere)
    for out in (image_folder / "train" / "dog" / "x", elsewhere / "x"):
        assert run_cli(pretrain_args(out, "data.name=folder", f"data.root={image_folder}"))[0] == 2
        assert f"--out {out} is inside {image_folder / 'train' / 'dog'}, whose" in capsys.readouterr().err
    # beside the split folders (not read), or beside the root: taken
    for out in (image_folder / "runs" / "x", tmp_path / "beside"):
        assert run_cli(pretrain_args(out, "data.name=folder", f"data.root={image_folder}", "train.max_steps=1",
                                     "eval.knn.enabled=false"))[0] == 0


def test_out_holding_other_files_is_refused_with_or_without_resume(tmp_path, capsys):
    """A folder of the user's own files is no run to continue: neither a run nor --resume writes into it (the
    advice to add --resume used to start a fresh run among them). Hidden files, as a Finder's .DS_Store, do
    not count."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    for resume in ([], ["--resume"]):
        assert run_cli(pretrain_args(out) + resume)[0] == 2
        assert "holds files that are not a repre run (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / ".DS_Store").write_bytes(b"")
    from repre.core.run_files import check_out

    check_out(hidden, resume=False)  # no error


def test_one_rule_tells_what_a_folder_holds(tmp_path):
    """`folder_kind`: the rule `--out`'s check and the run lock share."""
    from repre.core.run_files import folder_kind

    (tmp_path / "started" / "tb").mkdir(parents=True)
    (tmp_path / "started" / "config.yaml").write_text("preset: x\n")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".lock").write_text("")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("")
    kinds = {name: folder_kind(tmp_path / name) for name in ("started", "run", "hidden", "mine", "none")}
    assert kinds == {"started": "started", "run": "run", "hidden": "empty", "mine": "foreign", "none": "absent"}


def test_resume_continues_to_the_new_total(tmp_path, repre_log):
    out = tmp_path / "r"
    code, stdout = run_cli(pretrain_args(out, "eval.knn.enabled=false"))
    assert code == 0 and last_json(stdout)["steps"] == 4
    assert (last_json(stdout)["method"], last_json(stdout)["recon"]) == ("mocov3", True)  # what trained
    code, stdout = run_cli(["pretrain", "--out", str(out), "--resume", "--set", "train.max_steps=6"])
    assert code == 0 and last_json(stdout)["steps"] == 6
    assert "step-00000004.pt (step 4 of 6)" in repre_log.text  # went on from step 4, not from the start


def test_resume_goes_on_past_a_summary_and_a_metrics_line_cut_short(tmp_path, repre_log):
    """A crash or a full disk while the run's files were written: the cut line is dropped (said), the summary
    written again."""
    out = tmp_path / "r"
    assert run_cli(pretrain_args(out, "eval.knn.enabled=false"))[0] == 0
    (out / "summary.json").write_text('{"completed": tr')
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 4, "kind": "tra')
    code, stdout = run_cli(["pretrain", "--out", str(out), "--resume"])
    assert code == 0 and last_json(stdout)["steps"] == 4 and json.loads((out / "summary.json").read_text())["completed"]
    assert all(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
    assert "left out 1 line(s) cut short" in repre_log.text


def test_resume_on_an_empty_dir_starts_fresh(tmp_path, capsys):
    code, stdout = run_cli(pretrain_args(tmp_path / "baseline", "eval.knn.enabled=false") + ["--resume"])
    assert code == 0 and last_json(stdout)["steps"] == 4
    assert "starting fresh" in capsys.readouterr().err
    code, stdout = run_cli(pretrain_args(tmp_path / "baseline2", "eval.knn.enabled=false") + ["--resume"])
    assert code == 0 and "beside it has some" not in capsys.readouterr().err  # another seed's run, on purpose
    code, stdout = run_cli(pretrain_args(tmp_path / "basline", "eval.knn.enabled=false") + ["--resume"])  # a typo
    said = capsys.readouterr().err
    assert code == 0 and "it has no checkpoint, so this is a new run; baseline" in said


@pytest.mark.parametrize(
    "setting,message",
    [
        ("train.batchsize=4", "train.batch_size"),
        ("train.max_steps=abc", "must be int"),
        ("data.image_size=18", "not divisible by the patch size"),
        ("recon.taps=[0,9]", "out of range"),
        ("data.name=folder", "data.root"),
    ],
)
def test_user_errors_exit_2_with_a_message(tmp_path, capsys, setting, message):
    code, _ = run_cli(pretrain_args(tmp_path / "x", setting))
    assert code == 2
    assert message in capsys.readouterr().err


def test_an_error_in_a_data_worker_is_a_message_not_a_traceback(tmp_path, capsys):
    for i in range(4):  # no image readable: the worker raises the UserError
        (tmp_path / "bad" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / "a" / f"{i}.png").write_bytes(b"not an image")
    code, _ = run_cli(pretrain_args(tmp_path / "x", "data.name=folder", f"data.root={tmp_path / 'bad'}",
                                    "train.batch_size=2", "train.num_workers=1"))
    err = capsys.readouterr().err
    assert code == 2 and "repre: error: none of the 4 images" in err and "Traceback" not in err


def test_missing_dataset_exit_2(tmp_path, capsys):
    code, _ = run_cli(["pretrain", "--out", str(tmp_path / "x"), "--set", f"data.root={tmp_path}/nothing"])
    assert code == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_no_command_shows_the_commands():
    code, stdout = run_cli([])
    assert code == 0 and "COMMAND" in stdout and "repre pretrain" in stdout  # no run starts unasked


def test_presets_and_version(capsys):
    assert run_cli(["presets"])[1].splitlines()[0].split("\t")[0] == "fmnist-mocov3-repre"
    from repre.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and __version__ in capsys.readouterr().out


def test_world_size_without_a_launcher_says_to_use_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert run_cli(pretrain_args(tmp_path / "x"))[0] == 2
    assert "torchrun --nproc_per_node" in capsys.readouterr().err


def test_more_processes_than_gpus_is_refused_with_what_to_do(monkeypatch):
    """torchrun --nproc_per_node 2 on a machine with one GPU: LOCAL_RANK 1 has no GPU of its own."""
    from repre.core import dist
    from repre.errors import UserError

    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("joined a group"))
    with pytest.raises(UserError, match="LOCAL_RANK=1 but the machine shows 1 GPU.*--nproc_per_node 1"):
        dist.init_from_env(torch.device("cuda"))


def test_python_m_repre_entry_point():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "repre", "presets"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "fmnist-mocov3" in done.stdout


def test_sigterm_checkpoints_and_exits_3_then_resumes(tmp_path, monkeypatch, repre_log, capsys):
    import os
    import signal

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from repre.engine.trainer import Trainer

    original = Trainer.train_step

    def step_then_signal(self, batch):
        out = original(self, batch)
        if self.state.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    out = tmp_path / "stopped"
    code, stdout = run_cli(pretrain_args(out, "train.max_steps=6", "train.checkpoint_every=100",
                                         "eval.knn.enabled=false", "train.log_every=1"))
    summary = last_json(stdout)
    assert code == 3 and summary["completed"] is False and summary["steps"] == 3 and summary["diverged"] is False
    assert (out / "checkpoints" / "step-00000003.pt").is_file() and (out / "recon.png").is_file()  # drawn at a stop too
    assert f"stopped at step 3 of 6, checkpoint {out}" in repre_log.text and "--resume`" in repre_log.text
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text() + '{"step": 4, "kind": "train"}\n')
    time.sleep(1.1)  # event files sort by their names, which start with the second they were opened in
    with SummaryWriter(str(out / "tb")) as tb:  # as a run killed after its checkpoint leaves them
        tb.add_scalar("train/loss", 9.0, 4)
    time.sleep(1.1)
    monkeypatch.setattr(Trainer, "train_step", original)
    code, stdout = run_cli(["pretrain", "--out", str(out), "--resume"])
    done = last_json(stdout)
    assert code == 0 and done["steps"] == 6 and done["loss"] is not None
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated lines after the resume
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]  # the stale step 4 purged
    assert 9.0 not in [e.value for e in events.Scalars("train/loss")]
    assert [e.step for e in events.Images("recon")] == [3, 6]  # the reconstructions where each part ended
    # requeued after the end: the results stand, nothing is trained or evaluated again
    code, stdout = run_cli(["pretrain", "--out", str(out), "--resume"])
    assert code == 0 and last_json(stdout) == done and "completed its 6 steps" in repre_log.text
    assert json.loads((out / "summary.json").read_text()) == done
    code, _ = run_cli(["pretrain", "--out", str(out), "--resume", "--set", "train.max_steps=4"])
    assert code == 2 and "past train.max_steps=4" in capsys.readouterr().err
    code, _ = run_cli(["pretrain", "--out", str(out), "--resume", "--set", "train.max_steps=0",
                       "--set", "train.epochs=1"])  # a length in epochs is named as the user set it
    assert code == 2 and "past train.epochs=1 (" in capsys.readouterr().err


def test_resume_without_out_reads_the_default_runs_own_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["pretrain"]
    for item in TINY + ["eval.knn.enabled=false"]:
        args += ["--set", item]
    assert run_cli(args)[0] == 0  # into runs/fmnist-mocov3-repre
    code, stdout = run_cli(["pretrain", "--resume", "--set", "train.max_steps=6"])
    assert code == 0 and last_json(stdout)["steps"] == 6  # the run's own config, its length changed


def test_a_run_that_failed_before_its_first_step_leaves_its_out_usable(tmp_path, capsys):
    out = tmp_path / "r"
    code, _ = run_cli(pretrain_args(out, "train.batch_size=100000"))
    err = capsys.readouterr().err
    assert code == 2 and "fewer than one batch" in err
    assert " epochs of " not in err  # refused before the run's first line, which would count epochs of no step
    code, stdout = run_cli(pretrain_args(out, "eval.knn.enabled=false"))  # the corrected retry, same --out
    assert code == 0 and last_json(stdout)["steps"] == 4


def test_resume_with_a_different_model_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli(pretrain_args(out, "eval.knn.enabled=false"))[0] == 0
    code, _ = run_cli(pretrain_args(out, "eval.knn.enabled=false", "recon.weight=0.5") + ["--resume"])
    assert code == 2
    assert "recon.weight" in capsys.readouterr().err
    # another framework and six more keys: the framework named first, the count of those not listed
    many = ["method.name=dino", *(f"aug.{k}=0.01" for k in ("hflip", "jitter_prob", "brightness", "contrast",
                                                              "saturation", "hue"))]
    code, _ = run_cli(pretrain_args(out, "eval.knn.enabled=false", *many) + ["--resume"])
    said = capsys.readouterr().err
    assert code == 2 and "the config differs in method.name: 'mocov3' -> 'dino', aug." in said
    assert "(and 2 more). Resume" in said


@pytest.mark.parametrize("access", ["random", "stream"])
def test_shards_without_a_root_exit_2_saying_what_to_set(tmp_path, capsys, access):
    assert run_cli(pretrain_args(tmp_path / "x", "data.name=shards", f"data.shard_access={access}"))[0] == 2
    assert "data.root=/path/to/shards" in capsys.readouterr().err


def test_eval_linear_sweeps_on_val_and_reports_test(tiny_run):
    out, _ = tiny_run
    code, stdout = run_cli(["eval", "linear", "--checkpoint", str(out), "--set", "eval.linear.features=both",
                            "--set", "eval.linear.blocks=2", "--set", "eval.linear.epochs=5"])
    result = last_json(stdout)
    assert code == 0 and result["task"] == "linear" and 0 <= result["value"] <= 1
    extra = result["extra"]
    assert len(extra["sweep"]) == 9 and extra["dim"] == 2 * 2 * 32
    assert extra["val_top1"] == max(r["val_top1"] for r in extra["sweep"])


def test_eval_recon_reports_psnr_and_draws(tiny_run):
    out, _ = tiny_run
    code, stdout = run_cli(["eval", "recon", "--checkpoint", str(out)])
    result = last_json(stdout)
    assert code == 0 and result["task"] == "recon" and 0 < result["value"] < 100
    assert 0 < result["extra"]["l1"] < 1
    assert (out / "eval" / "recon" / "recon.png").is_file()


def test_eval_recon_of_a_baseline_is_refused(tmp_path, capsys):
    out = tmp_path / "b"
    assert run_cli(pretrain_args(out, "recon.enabled=false", "eval.knn.enabled=false"))[0] == 0
    assert run_cli(["eval", "recon", "--checkpoint", str(out)])[0] == 2
    assert "no decoder" in capsys.readouterr().err


def test_eval_finetune(tiny_run):
    out, _ = tiny_run
    code, stdout = run_cli(["eval", "finetune", "--checkpoint", str(out), "--set", "eval.finetune.steps=6",
                            "--set", "eval.finetune.batch_size=16"])
    result = last_json(stdout)
    assert code == 0 and result["task"] == "finetune" and 0 <= result["value"] <= 1


def test_supervised_pretraining_runs_and_learns(tmp_path):
    code, stdout = run_cli(pretrain_args(tmp_path / "sup", "method.name=supervised", "recon.enabled=false",
                                         "train.max_steps=20", "train.lr=5e-2"))
    summary = last_json(stdout)
    assert code == 0 and summary["completed"] and summary["loss_recon"] == 0.0
    train = [json.loads(x) for x in (tmp_path / "sup" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in train if r["kind"] == "train"]
    assert losses[-1] < min(losses[0], math.log(10)) - 0.1  # cross-entropy on 10 labels falls below chance
    assert not any("momentum" in r for r in train)  # no EMA to report


def test_a_log_line_on_a_terminal_clears_the_progress_bar_first(monkeypatch):
    """A warning during training (a skipped image, from a data worker too) starts a fresh line on a terminal
    rather than following the bar's text; a redirected stderr gets the plain line."""
    import io
    import logging

    from repre.cli import StderrHandler

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("repre: %(message)s"))
    record = logging.LogRecord("repre", logging.WARNING, __file__, 1, "skipping %s", ("x.png",), None)
    monkeypatch.setattr("sys.stderr", Terminal())
    assert handler.format(record) == "\r\x1b[Krepre: skipping x.png"
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert handler.format(record) == "repre: skipping x.png"


def test_a_wrong_setting_found_while_building_leaves_no_directory(tmp_path, capsys):
    """A data root that does not exist, or an image size the patches do not divide, exits 2 before --out is made
    (a retry with another --out would otherwise leave empty run directories behind)."""
    for bad in (["data.name=folder", f"data.root={tmp_path / 'nowhere'}"], ["data.image_size=30"]):
        assert run_cli(pretrain_args(tmp_path / "run", *bad))[0] == 2
        assert "error" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_an_interrupted_embed_or_eval_says_what_the_same_command_does(monkeypatch, capsys):

    def interrupted(args):
        raise KeyboardInterrupt

    replace_command(monkeypatch, "embed", interrupted)
    assert main(["embed", "--checkpoint", "x", "--out", "e.npy"]) == 3
    said = capsys.readouterr().err
    assert "interrupted; the same command (without --overwrite) goes on from the rows written" in said
    replace_command(monkeypatch, "eval", interrupted)
    assert main(["eval", "knn", "--checkpoint", "x"]) == 3
    assert "interrupted; no partial result is kept, the same command starts again" in capsys.readouterr().err


def test_a_training_bar_written_to_a_file_adds_no_line_per_step(tmp_path, monkeypatch):
    """Into a job's log every redraw is a line: a run of 12 steps logged every 2 (a new postfix each time) draws
    its bar when it starts and ends, not at each step or each train line; on a terminal it redraws at both."""
    import io
    import sys

    import repre.core.progress
    from repre.engine.trainer import Trainer

    monkeypatch.setattr(repre.core.progress, "TERMINAL_INTERVAL", 0.0)  # every update redraws, however fast the steps
    monkeypatch.setattr(repre.core.progress, "FILE_INTERVAL", 1e9)  # and into a file none, however slow

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    redraws = {}
    for name, stream in (("file", io.StringIO()), ("terminal", Terminal())):
        monkeypatch.setattr(sys, "stderr", stream)
        cfg = tiny_config("train.max_steps=12", "train.log_every=2", "eval.knn.enabled=false", "train.progress=true",
                          "recon.enabled=false")
        Trainer(cfg, tmp_path / name).fit()
        redraws[name] = stream.getvalue().count("pretrain:")
        if name == "file":  # each redraw a line of its own, as `tail` and `less` show a job's log
            lines = [ln for ln in stream.getvalue().splitlines() if "pretrain:" in ln]
            assert "\r" not in stream.getvalue() and len(lines) == redraws["file"], stream.getvalue()
    assert redraws["file"] <= 3 and redraws["terminal"] >= 6, redraws


def test_a_bar_line_in_a_file_shows_its_own_steps_values_and_ends_once(tmp_path, monkeypatch):
    """The bar drew a step before that step's train line set its values (a log's line "10/30" showed step 5's
    loss), and redrew its 100% line when it closed, with other values than the first."""
    import io
    import json
    import re
    import sys

    import repre.core.progress
    from repre.engine.trainer import Trainer

    monkeypatch.setattr(repre.core.progress, "FILE_INTERVAL", 0.0)  # a line at every step
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    cfg = tiny_config("train.max_steps=6", "train.log_every=2", "eval.knn.enabled=false", "train.progress=true",
                      "recon.enabled=false")
    Trainer(cfg, tmp_path / "r").fit()
    lines = [r for r in map(json.loads, (tmp_path / "r" / "metrics.jsonl").open()) if r["kind"] == "train"]
    losses = {r["step"]: r["loss"] for r in lines}
    assert all(r["images_per_sec"] == float(f"{r['images_per_sec']:.7g}") for r in lines)  # as the rest: rounded
    shown = {int(m[1]): float(m[2]) for m in re.finditer(r"pretrain:.*\| (\d+)/6 .*loss=([\d.]+)", stream.getvalue())}
    assert {step: f"{shown[step]:.4f}" for step in losses} == {step: f"{v:.4f}" for step, v in losses.items()}
    assert stream.getvalue().count("6/6") == 1, stream.getvalue()


def test_a_command_puts_back_the_callers_sigterm_handler(tmp_path):
    """A library user's (or test runner's) SIGTERM handler is theirs again after main() returns or fails."""
    import signal

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["presets"]) == 0 and signal.getsignal(signal.SIGTERM) is mine
        assert main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x.safetensors")]) == 2
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_bar_in_a_file_writes_a_line_at_most_every_interval(monkeypatch):
    """tqdm's monitor thread redrew a bar whose updates it had spaced out, without restarting the interval: a
    line, then another a step later (fast steps, then slow ones)."""
    import io
    import sys
    import time

    from tqdm import tqdm

    import repre.core.progress
    from repre.core.progress import progress_bar

    class Timed(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.times = []

        def write(self, text: str) -> int:
            if "steps:" in text:
                self.times.append(time.monotonic())
            return super().write(text)

    monkeypatch.setattr(repre.core.progress, "FILE_INTERVAL", 0.3)
    monkeypatch.setattr(tqdm, "monitor_interval", 0.05)  # the monitor wakes often (every 10 s by default)
    stream = Timed()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress_bar(total=50, desc="steps")
    for i in range(50):
        time.sleep(0.005 if i < 30 else 0.08)
        bar.update(1)
    bar.close()
    gaps = [b - a for a, b in zip(stream.times[1:-2], stream.times[2:-1], strict=True)]  # the first and last apart
    assert gaps and min(gaps) >= 0.29, (gaps, stream.getvalue())


def test_a_bar_a_terminal_clears_at_its_end_ends_with_its_last_line_in_a_file(monkeypatch):
    """The k-NN's bars leave nothing on a terminal (leave=False); in a file their first line (0%) stayed their
    last, as if the k-NN had hung: there the end is written."""
    import io
    import sys

    from repre.core.progress import progress_bar

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    for _ in progress_bar(range(3), desc="k-NN bank", leave=False):
        pass
    assert "k-NN bank: 100%" in stream.getvalue().splitlines()[-1]


def test_a_reader_of_standard_error_that_left_stops_no_run(monkeypatch):
    """`repre pretrain 2>&1 | head -2`: once head left, the bar's next line raised BrokenPipeError, and the run
    ended at once, no checkpoint written. The bar and the log now write nothing more, and the run goes on."""
    import io
    import logging
    import sys

    from repre.cli import setup_logging
    from repre.core.progress import progress_bar

    class LeftReader(io.StringIO):
        def write(self, text: str) -> int:
            if self.getvalue().count("\n") >= 2:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

        def flush(self) -> None:
            if self.getvalue().count("\n") >= 2:
                raise BrokenPipeError(32, "Broken pipe")

    stream = LeftReader()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(logging, "raiseExceptions", True)  # the default: a handler's write error is reported
    setup_logging()
    bar = progress_bar(total=5, desc="pretrain")
    for step in range(5):
        logging.getLogger("repre").warning("step %d", step)
        bar.update(1)
    bar.close()
    assert stream.getvalue().count("\n") == 2


def test_a_global_batch_torchrun_cannot_share_is_refused_before_torch_is_imported(tmp_path):
    """Each process would otherwise import torch and timm, join the group and take the run's lock first."""
    import subprocess
    import sys

    code = ("import os, sys; os.environ.update(TORCHELASTIC_RUN_ID='x', WORLD_SIZE='2', RANK='0'); "
            "from repre.cli import main; "
            f"status = main(['pretrain', '--out', {str(tmp_path / 'run')!r}, '--set', 'train.batch_size=15']); "
            "sys.exit(10 + status if 'torch' in sys.modules else status)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not divisible by the 2 processes" in done.stderr, done.stderr[-500:]


def test_the_method_of_an_evaluation_is_the_checkpoints(tiny_run, tmp_path, capsys):
    """The encoder measured is the one the checkpoint's method evaluates: another method.name given with --set
    would measure the same encoder (or another one, unasked) under a folder of its name; show would build
    another model than the checkpoint's."""
    run, _ = tiny_run
    for command in (["eval", "knn"], ["eval", "recon"], ["embed", "--out", str(tmp_path / "e.npy")],
                    ["show", "--out", str(tmp_path / "s.png")]):
        assert run_cli([*command, "--checkpoint", str(run), "--set", "method.name=moby"])[0] == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"--set method.name: not read by `repre {command[0]}" in err and "(method.*: the " \
               "checkpoint's method builds its model and picks the encoder evaluated" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["export", "--checkpoint", "RUN", "--out", "enc.safetensors"],
                                     ["show", "--checkpoint", "RUN", "--out", "show.png"], ["compare", "RUN"]])
def test_a_one_process_command_under_torchrun_says_to_run_it_alone(command, monkeypatch, capsys):
    """export, show, map, neighbors, compare ran whole in every process (the same file written N times, N
    results printed): refused before any work."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _ = run_cli(command)
    assert code == 2 and f"repre {command[0]} runs in one process: run it without torchrun" in capsys.readouterr().err


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_usage_error_under_torchrun_is_said_once_and_written_for_torchrun_s_summary(rank, monkeypatch, capsys,
                                                                                       tmp_path):
    """argparse's error was printed by every process, and torchrun's summary showed none of it."""
    import json

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    with pytest.raises(SystemExit) as exited:
        main(["pretrain", "--out"])
    said = capsys.readouterr().err
    assert exited.value.code == 2 and ("expected one argument" in said) == (rank == "0")
    written = json.loads((tmp_path / "error.json").read_text())["message"]["message"]
    assert written == "repre: error: argument --out: expected one argument"
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and bool(capsys.readouterr().out) == (rank == "0")  # once too


def test_eval_recon_under_torchrun_says_to_run_it_alone(tiny_run, monkeypatch, capsys):
    """It ran whole in every process, each on the first GPU."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _ = run_cli(["eval", "recon", "--checkpoint", str(tiny_run[0])])
    assert code == 2 and "repre eval recon runs in one process" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["map", "neighbors"])
def test_a_seed_numpy_would_refuse_exits_2_at_the_argument(command, capsys):
    """map --seed -1 was a traceback from scikit-learn (or numpy, with a subset): the argument is checked."""
    for bad in ("-1", "4294967296", "x"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--embeddings", "e.npy", "--out", "m.png", "--seed", bad])
        assert exited.value.code == 2
        assert f"argument --seed: '{bad}' is no seed: give an integer from 0 to 4294967295" in capsys.readouterr().err


def test_a_rank_left_in_the_environment_without_a_launcher_is_not_read(monkeypatch, capsys):
    """RANK=1 in a shell without WORLD_SIZE made repre act as another torchrun rank: no error message, no
    summary line on stdout."""
    from repre.core.launch import launch_rank

    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert launch_rank() == 0
    code, _ = run_cli(["config", "--set", "train.lr=x"])
    assert code == 2 and "train.lr must be float" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["WORLD_SIZE", "LOCAL_WORLD_SIZE"])
def test_a_launcher_variable_that_is_no_integer_is_said_not_raised(name, monkeypatch, capsys):
    monkeypatch.setenv(name, "abc")
    assert run_cli(["--version"])[0] == 2
    assert f"{name}='abc' in the environment is not an integer" in capsys.readouterr().err


def test_a_batch_the_processes_do_not_divide_gets_advice_for_a_new_run_or_a_resume(tmp_path, monkeypatch, capsys):
    """`--resume` of a folder with no checkpoint starts a run, whose batch may change: the advice of a new run.
    A run with a checkpoint keeps its batch: the process counts that divide it."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    args = [*pretrain_args(tmp_path / "run", "train.batch_size=16"), "--resume"]
    assert run_cli(args)[0] == 2
    assert "not divisible by the 3 processes; use a multiple of 3" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-00000004.pt").write_bytes(b"")
    assert run_cli(args)[0] == 2
    assert "a resumed run keeps its batch: launch a number of processes that divides it (1, 2, 4, 8, 16)" in (
        capsys.readouterr().err)
