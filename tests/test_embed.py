"""`repre embed`: the k-NN features of every image, an index beside them, unreadable images left out, and a
rerun that continues a stopped run."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import last_json, run_cli, save_png, tiny_config
from repre.core import checkpoint_io as ckpt_io
from repre.data.evaluation import eval_loader
from repre.eval.knn import extract_features
from repre.pretrained import load_encoder
from repre.use.store import EmbeddingWriter, read_index


def embed_args(run, out, *extra: str) -> list[str]:
    args = ["embed", "--checkpoint", str(run), "--out", str(out)]
    for item in extra:
        args += ["--set", item]
    return args


def index_of(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def labelled_folder(image_folder):
    """image_folder's train/ (2 classes x 12 images) with one corrupt file among the cats."""
    (image_folder / "train" / "cat" / "5b.png").write_bytes(b"not an image")
    return image_folder


def test_rows_are_the_knn_features_with_their_index(tiny_run, tmp_path):
    run, _ = tiny_run
    code, stdout = run_cli(embed_args(run, tmp_path / "e.npy"))
    summary = last_json(stdout)
    assert code == 0 and summary["command"] == "embed"
    assert (summary["images"], summary["dim"], summary["skipped"]) == (64, 32, 0)  # TINY: 64 train images, 32-d
    rows = np.load(tmp_path / "e.npy")
    assert rows.dtype == np.float32 and rows.shape == (64, 32)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    encoder, cfg = load_encoder(run)
    from repre.core.runtime import setup_runtime

    knn, labels = extract_features(encoder, eval_loader(cfg, "train", None), setup_runtime(cfg.train))
    np.testing.assert_array_equal(rows, knn.numpy())  # the same encoder, transform and feature path
    index = index_of(tmp_path / "e.csv")
    assert [(int(r["row"]), int(r["index"]), r["path"]) for r in index] == [(i, i, "") for i in range(64)]
    assert [int(r["label"]) for r in index] == labels.tolist()
    card = json.loads((tmp_path / "e.json").read_text())
    assert card["progress"]["complete"] and card["identity"]["split"] == "train"


def test_images_of_another_dataset_are_normalized_as_the_encoder_pretrained(tiny_run, tmp_path):
    """The run's own test images written as PNGs and embedded as a folder: the same rows as the run's data gives
    them (a folder's own statistics, ImageNet's, would shift every feature); data.mean/std still choose."""
    from repre.data.splits import eval_source

    run, _ = tiny_run
    source = eval_source(tiny_config(), "test")
    for i in range(len(source)):
        save_png(tmp_path / "photos" / f"{i:03d}.png", source.load(i)[0].permute(1, 2, 0).numpy())
    assert run_cli([*embed_args(run, tmp_path / "own.npy"), "--split", "test"])[0] == 0
    folder = ("data.name=folder", f"data.root={tmp_path / 'photos'}")
    assert run_cli(embed_args(run, tmp_path / "folder.npy", *folder))[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "folder.npy"), np.load(tmp_path / "own.npy"), atol=1e-6)
    imagenet = ("data.mean=[0.485,0.456,0.406]", "data.std=[0.229,0.224,0.225]")
    assert run_cli(embed_args(run, tmp_path / "imagenet.npy", *folder, *imagenet))[0] == 0
    shifted = (np.load(tmp_path / "imagenet.npy") * np.load(tmp_path / "own.npy")).sum(axis=1)
    assert shifted.min() < 0.999  # what a folder's statistics did to the rows


def test_a_corrupt_image_is_reported_and_left_out(tiny_run, tmp_path, labelled_folder, repre_log):
    run, _ = tiny_run
    code, stdout = run_cli(embed_args(run, tmp_path / "f.npy", "data.name=folder", f"data.root={labelled_folder}"))
    summary = last_json(stdout)
    assert code == 0 and (summary["images"], summary["skipped"], summary["source_images"]) == (24, 1, 25)
    assert np.load(tmp_path / "f.npy").shape == (24, 32)
    index = index_of(tmp_path / "f.csv")
    files = [f for c in ("cat", "dog") for f in sorted((labelled_folder / "train" / c).iterdir())]
    bad = files.index(labelled_folder / "train" / "cat" / "5b.png")
    assert [(int(r["row"]), int(r["index"]), r["path"]) for r in index] == [
        (row, i, str(f)) for row, (i, f) in enumerate((i, f) for i, f in enumerate(files) if i != bad)]
    assert [r["label"] for r in index] == ["0"] * 12 + ["1"] * 12
    assert any(f"skipped unreadable image {bad}" in m and str(files[bad]) in m for m in repre_log.messages)
    assert json.loads((tmp_path / "f.json").read_text())["classes"] == ["cat", "dog"]  # label i's name
    code, stdout = run_cli(["neighbors", "--embeddings", str(tmp_path / "f.npy"), "--out", str(tmp_path / "n.png"),
                            "--query-index", "0", "--k", "2"])
    (query,) = last_json(stdout)["queries"]
    assert code == 0 and query["class"] == "cat" and {n["class"] for n in query["neighbors"]} <= {"cat", "dog"}


def test_a_folder_of_no_readable_image_exits_2(tiny_run, tmp_path, capsys):
    """Every image unreadable: embed exited 0 with a file of no row (evaluation stops in that case)."""
    run, _ = tiny_run
    for i in range(3):
        (tmp_path / "bad" / f"{i}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "bad" / f"{i}.png").write_bytes(b"not a png")
    assert run_cli(embed_args(run, tmp_path / "b.npy", "data.name=folder", f"data.root={tmp_path / 'bad'}"))[0] == 2
    assert "none of the 3 images could be read (each is named in a warning above)" in capsys.readouterr().err


def test_the_test_split_and_a_flat_folder_without_labels(tiny_run, tmp_path):
    run, _ = tiny_run
    code, stdout = run_cli(embed_args(run, tmp_path / "t.npy") + ["--split", "test"])
    assert code == 0 and last_json(stdout)["images"] == 32  # TINY: 32 test images
    rng = np.random.default_rng(0)
    for name in ("0", "1", os.fsdecode(b"caf\xe9")):  # a name of an old archive's, not UTF-8
        save_png(tmp_path / "flat" / f"{name}.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    code, stdout = run_cli(embed_args(run, tmp_path / "u.npy", "data.name=folder", f"data.root={tmp_path / 'flat'}"))
    assert code == 0 and last_json(stdout)["images"] == 3
    assert [r["label"] for r in index_of(tmp_path / "u.csv")] == ["", "", ""]
    assert read_index(tmp_path / "u.csv", {2}, 3)[2][1] == str(tmp_path / "flat" / os.fsdecode(b"caf\xe9.png"))
    assert json.loads((tmp_path / "u.json").read_text())["classes"] is None


def killed_after(monkeypatch, rows: int, args: list[str]) -> None:
    """Run embed `args`, killed when it is about to append a batch after `rows` rows (the append patched)."""
    original = EmbeddingWriter.append

    def crash(self, feats, *rest):
        if self.progress["rows"] == rows:
            raise RuntimeError("killed")
        return original(self, feats, *rest)

    monkeypatch.setattr(EmbeddingWriter, "append", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_cli(args)


def test_a_stopped_run_continues_from_its_last_batch(tiny_run, tmp_path, monkeypatch):
    run, _ = tiny_run
    out = tmp_path / "r.npy"
    args = embed_args(run, out, "eval.batch_size=16")  # 4 batches of the 64 images
    original = EmbeddingWriter.append
    killed_after(monkeypatch, 32, args)
    card = json.loads(out.with_suffix(".json").read_text())["progress"]
    assert (card["next_index"], card["rows"], card["complete"]) == (32, 32, False)
    with open(out.with_suffix(".csv"), "a") as fh:  # a line written after the card's count: dropped on resume
        fh.write("32,32,,half a li")
    monkeypatch.setattr(EmbeddingWriter, "append", original)
    code, stdout = run_cli(args)
    summary = last_json(stdout)
    assert code == 0 and summary["resumed_from"] == 32 and summary["images"] == 64
    assert f"{out} holds 64 of 64 images as " in stdout and "images from 32 embedded now" in stdout
    fresh = tmp_path / "fresh.npy"
    assert run_cli(embed_args(run, fresh, "eval.batch_size=16"))[0] == 0
    np.testing.assert_array_equal(np.load(out), np.load(fresh))
    assert out.with_suffix(".csv").read_bytes() == fresh.with_suffix(".csv").read_bytes()


def test_a_second_embed_of_the_same_out_is_refused_while_the_first_writes(tiny_run, tmp_path, capsys):
    """A rerun while the first still wrote continued from the same row: the index held rows twice, both
    exiting 0. The second is refused now, naming the first; the lock goes with its process."""
    run, _ = tiny_run
    out = tmp_path / "emb" / "r.npy"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pathlib import Path; from repre.core.run_lock import RunLock; "
        f"Path({str(out.parent)!r}).mkdir(); lock = RunLock(Path({str(out.parent)!r}), '.r.npy.lock'); "
        "assert lock.acquire() is None; print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run_cli(embed_args(run, out))[0] == 2
        assert f"{out} is being written by another process (pid {holder.pid} on " in capsys.readouterr().err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_cli(embed_args(run, out))[0] == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.csv", "r.json", "r.npy"]  # the lock file goes with it


def test_a_finished_run_is_reported_again_without_recomputing(tiny_run, tmp_path, monkeypatch):
    run, _ = tiny_run
    out = tmp_path / "done.npy"
    assert run_cli(embed_args(run, out))[0] == 0
    before = out.read_bytes()
    monkeypatch.setattr(EmbeddingWriter, "append", lambda *a: pytest.fail("recomputed a finished embedding"))
    code, stdout = run_cli(embed_args(run, out))
    summary = last_json(stdout)
    assert code == 0 and summary["resumed_from"] == 64 and summary["images_per_sec"] is None
    assert summary["images"] == 64 and out.read_bytes() == before


def test_a_finished_file_cut_short_or_missing_since_is_refused_not_padded(tiny_run, tmp_path, capsys):
    """A rerun of a finished embed padded a FILE.npy cut short by a copy with zero rows and called it complete;
    with the .npy gone it blamed the folder ("no file can be made there"). An index cut short is refused too."""
    run, _ = tiny_run
    out = tmp_path / "cut.npy"
    assert run_cli(embed_args(run, out))[0] == 0
    with open(out, "r+b") as fh:
        fh.truncate(1000)
    assert run_cli(embed_args(run, out))[0] == 2
    assert "rerun `repre embed --overwrite`" in capsys.readouterr().err and out.stat().st_size == 1000
    assert run_cli([*embed_args(run, out), "--overwrite"])[0] == 0
    index = out.with_suffix(".csv")
    index.write_bytes(index.read_bytes()[:-3])  # the last line's label: read as none, a complete line
    assert run_cli(embed_args(run, out))[0] == 2
    assert f"{index} has {index.stat().st_size:,} bytes, its card " in capsys.readouterr().err
    for gone in (".npy", ".csv"):
        assert run_cli([*embed_args(run, out), "--overwrite"])[0] == 0
        out.with_suffix(gone).unlink()
        assert run_cli(embed_args(run, out))[0] == 2
        err = capsys.readouterr().err
        assert f"{out.with_suffix(gone)} is missing beside its card cut.json" in err and "--overwrite" in err


def test_a_stopped_embed_of_a_folder_whose_files_changed_is_refused(tiny_run, tmp_path, image_folder, monkeypatch,
                                                                     capsys):
    """Continued over renamed files (the same count), the rows named images gone and one image had none."""
    run, _ = tiny_run
    out = tmp_path / "f.npy"
    args = embed_args(run, out, "data.name=folder", f"data.root={image_folder}", "eval.batch_size=8")
    killed_after(monkeypatch, 8, args)
    monkeypatch.undo()
    (image_folder / "train" / "cat" / "0.png").rename(image_folder / "train" / "cat" / "99.png")
    assert run_cli(args)[0] == 2
    err = capsys.readouterr().err
    assert "f.csv row 0 is " in err and "0.png, but image 0 of the data is now " in err and "--overwrite" in err


def test_existing_files_of_other_data_need_overwrite(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    out = tmp_path / "o.npy"
    assert run_cli(embed_args(run, out))[0] == 0
    assert run_cli(embed_args(run, out) + ["--split", "test"])[0] == 2
    assert "made with another number of images, split (their card: o.json); give another --out, or --overwrite" in \
        capsys.readouterr().err
    assert run_cli(embed_args(run, out, "data.subset=8") + ["--split", "test"])[0] == 2
    assert "data.subset picks training images" in capsys.readouterr().err
    code, stdout = run_cli(embed_args(run, out) + ["--split", "test", "--overwrite"])
    assert code == 0 and last_json(stdout)["images"] == 32 and np.load(out).shape == (32, 32)
    foreign = tmp_path / "foreign.npy"
    np.save(foreign, np.zeros((2, 2), dtype=np.float32))
    assert run_cli(embed_args(run, foreign))[0] == 2
    assert "foreign.npy exists beside --out, and foreign.json is missing; give another --out" in capsys.readouterr().err
    (tmp_path / "card.json").write_text("{}")  # an export's card, say, of the name embed's would take
    assert run_cli(embed_args(run, tmp_path / "card.npy"))[0] == 2
    assert "card.json exists beside --out, and card.json is no embedding card (another file of that name)" in \
        capsys.readouterr().err


def test_a_card_from_before_the_normalization_was_recorded_goes_on(tiny_run, tmp_path, monkeypatch):
    """A stopped embed whose card left data.mean/std null (the data's own statistics, as its rows were made)
    continues; one whose rows took other statistics than the encoder's is refused."""
    run, _ = tiny_run
    out = tmp_path / "old.npy"
    original = EmbeddingWriter.append
    killed_after(monkeypatch, 16, embed_args(run, out, "eval.batch_size=16"))
    monkeypatch.setattr(EmbeddingWriter, "append", original)
    card = json.loads(out.with_suffix(".json").read_text())
    card["identity"]["data"].update(mean=None, std=None)  # as written before: the synthetic data's own, the same
    out.with_suffix(".json").write_text(json.dumps(card))
    code, stdout = run_cli(embed_args(run, out, "eval.batch_size=16"))
    assert code == 0 and last_json(stdout)["resumed_from"] == 16
    card["identity"]["data"].update(name="folder")  # another kind of data: other statistics, other rows
    out.with_suffix(".json").write_text(json.dumps(card))
    assert run_cli(embed_args(run, out, "eval.batch_size=16"))[0] == 2


def test_settings_that_change_the_rows_are_part_of_their_identity(tiny_run, tmp_path, monkeypatch, capsys):
    """A stopped embed continued with another model.* setting, or other generated images (train.seed), would mix
    two kinds of rows in one file: refused, naming what differs; a card from before they were recorded goes on."""
    run, _ = tiny_run
    out = tmp_path / "s.npy"
    original = EmbeddingWriter.append
    killed_after(monkeypatch, 16, embed_args(run, out, "eval.batch_size=16", "train.seed=7"))
    monkeypatch.setattr(EmbeddingWriter, "append", original)
    assert run_cli(embed_args(run, out, "eval.batch_size=16"))[0] == 2
    assert "made with another seed (train.seed, which draws generated images)" in capsys.readouterr().err
    pooled = 'model.kwargs={patch_size: 4, embed_dim: 32, depth: 4, num_heads: 2, global_pool: avg, fc_norm: false}'
    assert run_cli(embed_args(run, out, "eval.batch_size=16", "train.seed=7", pooled))[0] == 2
    assert "made with another model settings" in capsys.readouterr().err
    card = json.loads(out.with_suffix(".json").read_text())
    del card["identity"]["model"], card["identity"]["data_seed"]  # as written before they were recorded
    out.with_suffix(".json").write_text(json.dumps(card))
    code, stdout = run_cli(embed_args(run, out, "eval.batch_size=16", "train.seed=7"))
    assert code == 0 and last_json(stdout)["resumed_from"] == 16


def test_the_test_split_of_a_folder_without_one_says_what_embed_can_do(tiny_run, tmp_path, image_folder, capsys):
    run, _ = tiny_run
    shutil.rmtree(image_folder / "val")
    args = embed_args(run, tmp_path / "t.npy", "data.name=folder", f"data.root={image_folder}") + ["--split", "test"]
    assert run_cli(args)[0] == 2
    assert (f"--split test: {image_folder} has no val/ (or test/) folder, so no test images to read: embed its "
            "training images (--split train)") in capsys.readouterr().err
    # the training split of a folder with one beside it: said so (it advised image_folder/train/val/)
    (image_folder / "val").mkdir()
    args = embed_args(run, tmp_path / "t.npy", "data.name=folder", f"data.root={image_folder / 'train'}")
    assert run_cli([*args, "--split", "test"])[0] == 2
    assert (f"{image_folder / 'train'} is a training split itself, so no test images to read: embed its training "
            f"images (--split train), or point data.root at {image_folder}") in capsys.readouterr().err


def test_the_runs_subset_is_not_applied_to_other_images(tmp_path, image_folder):
    """A run pre-trained on data.subset=16 of its images: embed of another folder reads all of that folder (the
    subset picked among the run's own images), and neighbors reads the same images back."""
    from conftest import TINY

    args = ["pretrain", "--out", str(tmp_path / "run")]
    for item in [*TINY, "data.subset=16", "train.max_steps=1", "eval.knn.enabled=false", "train.num_workers=0"]:
        args += ["--set", item]
    assert run_cli(args)[0] == 0
    code, stdout = run_cli(embed_args(tmp_path / "run", tmp_path / "f.npy", "data.name=folder",
                                      f"data.root={image_folder}"))
    assert code == 0 and last_json(stdout)["images"] == 24  # image_folder's train/: 2 classes x 12
    code, stdout = run_cli(embed_args(tmp_path / "run", tmp_path / "s.npy"))
    assert code == 0 and last_json(stdout)["images"] == 16  # the run's own images: its subset
    assert run_cli(["neighbors", "--embeddings", str(tmp_path / "f.npy"), "--out", str(tmp_path / "n.png")])[0] == 0


def test_another_checkpoint_is_refused(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    out = tmp_path / "c.npy"
    assert run_cli(embed_args(run, out))[0] == 0
    card = json.loads(out.with_suffix(".json").read_text())
    step_file = run / "checkpoints" / "step-00000020.pt"  # the weights read: its checksum, not last.pt's
    assert card["step"] == 20 and card["identity"]["checkpoint_sha256"] == ckpt_io.digest(step_file)
    code, _ = run_cli(embed_args(run / "checkpoints" / "step-00000010.pt", out))
    err = capsys.readouterr().err
    assert code == 2 and "made with another checkpoint (their card" in err
    assert f"to go on with the weights they were made from, give --checkpoint {step_file.resolve()}" in err


def test_features_that_are_not_finite_are_refused(tiny_run, tmp_path, capsys):
    """A diverged checkpoint's NaN rows would pass for embeddings (neighbours ranked by NaN, the map's traceback):
    exit 2, as k-NN does."""
    run, _ = tiny_run
    ckpt = ckpt_io.load(run)
    ckpt["model"]["method.encoder.model.blocks.3.mlp.fc2.weight"][0, 0] = float("inf")
    torch.save(ckpt, tmp_path / "diverged.pt")
    assert run_cli(embed_args(tmp_path / "diverged.pt", tmp_path / "e.npy"))[0] == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "images of the batch from image 0 are not finite (NaN or inf): the weights are not finite (a diverged " \
        "run's checkpoint: embed an earlier one, with --overwrite or into another --out)" in err


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("suffix", "must end in .npy"),
    ("streamed", "streamed shards"),
])
def test_user_errors_exit_2_with_what_to_do(tiny_run, tmp_path, capsys, case, message):
    run, _ = tiny_run
    args = {
        "missing": embed_args(tmp_path / "nothing", tmp_path / "m.npy"),
        "suffix": embed_args(run, tmp_path / "m.bin"),
        "streamed": embed_args(run, tmp_path / "m.npy", "data.name=shards", "data.root=https://x/a-{0..1}.tar"),
    }[case]
    assert run_cli(args)[0] == 2
    assert message in capsys.readouterr().err


def test_copied_run_dir_keeps_the_identity(tiny_run, tmp_path):
    """The identity is the checkpoint's bytes, not its path: a copied run continues the same files."""
    run, _ = tiny_run
    out = tmp_path / "i.npy"
    assert run_cli(embed_args(run, out))[0] == 0
    copy = tmp_path / "copy"
    shutil.copytree(run / "checkpoints", copy / "checkpoints")
    code, stdout = run_cli(embed_args(copy, out))
    assert code == 0 and last_json(stdout)["resumed_from"] == 64
    assert torch.from_numpy(np.load(out)).norm(dim=1).allclose(torch.ones(64))


def test_embed_show_neighbors_and_map_refuse_settings_they_do_not_read(tiny_run, tmp_path, capsys):
    """A --set key the command does not read would change nothing: exit 2 before anything is read or written."""
    run, _ = tiny_run
    assert run_cli(embed_args(run, tmp_path / "e.npy", "train.lr=1", "eval.batch_size=8"))[0] == 2
    assert "--set train.lr: not read by `repre embed`" in capsys.readouterr().err and not (tmp_path / "e.npy").exists()
    assert run_cli(["show", "--checkpoint", str(run), "--out", str(tmp_path / "s.png"), "--set", "aug.hflip=0"])[0] == 2
    assert "--set aug.hflip: not read by `repre show`" in capsys.readouterr().err
    assert run_cli(["neighbors", "--checkpoint", str(run), "--embeddings", str(tmp_path / "e.npy"),
                    "--out", str(tmp_path / "n.png"), "--set", "model.arch=vit_tiny_patch16_224"])[0] == 2
    assert "--set model.arch: not read by `repre neighbors`" in capsys.readouterr().err
    assert run_cli(["map", "--embeddings", str(tmp_path / "e.npy"), "--out", str(tmp_path / "m.png"),
                    "--set", "train.lr=1"])[0] == 2
    assert "--set train.lr: not read by `repre map`" in capsys.readouterr().err
    assert run_cli(embed_args(run, tmp_path / "l.npy"))[0] == 0  # labelled rows: the map draws points, no images
    assert run_cli(["map", "--embeddings", str(tmp_path / "l.npy"), "--out", str(tmp_path / "m.png"),
                    "--set", "data.image_size=32"])[0] == 2
    assert "the map of labelled rows draws points, no images; --thumbnails" in capsys.readouterr().err


def test_an_interrupted_embed_ends_with_a_json_line_of_its_progress(tiny_run, tmp_path, monkeypatch):
    """Ctrl-C mid-way exited 3 with nothing on stdout, where a script reads the last line."""
    run, _ = tiny_run
    out = tmp_path / "i.npy"
    original = EmbeddingWriter.append

    def interrupted(self, feats, *rest):
        if self.progress["rows"] == 32:
            raise KeyboardInterrupt
        return original(self, feats, *rest)

    monkeypatch.setattr(EmbeddingWriter, "append", interrupted)
    code, stdout = run_cli(embed_args(run, out, "eval.batch_size=16"))
    line = last_json(stdout)
    assert code == 3 and line["completed"] is False and (line["images"], line["next_index"]) == (32, 32)
    assert line["embeddings"] == str(out)
    monkeypatch.setattr(EmbeddingWriter, "append", original)
    assert last_json(run_cli(embed_args(run, out, "eval.batch_size=16"))[1])["completed"] is True


def test_keys_that_cannot_change_a_row_are_refused_or_left_out_of_the_identity(tiny_run, tmp_path, labelled_folder,
                                                                               capsys):
    """data.local_size went into the card and refused a rerun of the same images as "another data"; the
    generated images' sizes do not change a folder's rows."""
    run, _ = tiny_run
    assert run_cli(embed_args(run, tmp_path / "l.npy", "data.local_size=8"))[0] == 2
    assert "--set data.local_size: not read by `repre embed`" in capsys.readouterr().err
    folder = ["data.name=folder", f"data.root={labelled_folder}"]
    assert run_cli(embed_args(run, tmp_path / "f.npy", *folder))[0] == 0
    code, stdout = run_cli(embed_args(run, tmp_path / "f.npy", *folder, "data.synthetic_train=10"))
    assert code == 0 and last_json(stdout)["images_per_sec"] is None  # the same files, finished
    # the card's data: none of pre-training's alone (a DINO run's local crops read as "another data")
    data = json.loads((tmp_path / "f.json").read_text())["identity"]["data"]
    assert not {"local_crops", "local_size", "device_stages", "shuffle_block", "stream_size"} & data.keys(), data


def test_neighbors_and_map_say_what_is_wrong_with_their_options_and_a_damaged_file(tiny_run, tmp_path, capsys):
    """A truncated .npy was a traceback; --checkpoint on a map of points, --queries or --seed with --query-index
    did nothing, silently."""
    run, _ = tiny_run
    out = tmp_path / "e.npy"
    assert run_cli(embed_args(run, out))[0] == 0
    base = ["neighbors", "--embeddings", str(out), "--out", str(tmp_path / "n.png")]
    assert run_cli([*base, "--queries", "3", "--query-index", "1,2"])[0] == 2
    assert "--queries 3 and --query-index: give the rows, or how many to draw, not both" in capsys.readouterr().err
    assert run_cli([*base, "--seed", "3", "--query-index", "1,2"])[0] == 2
    assert "--seed draws the queries, which --query-index names" in capsys.readouterr().err
    drawn = ["map", "--embeddings", str(out), "--out", str(tmp_path / "m.png")]
    assert run_cli([*drawn, "--checkpoint", str(run)])[0] == 2
    assert "--checkpoint " in (err := capsys.readouterr().err) and "the map of labelled rows draws points" in err
    with open(out, "r+b") as fh:
        fh.truncate(1000)
    for command in (base, drawn):
        assert run_cli(command)[0] == 2
        assert f"cannot read {out} (" in capsys.readouterr().err
