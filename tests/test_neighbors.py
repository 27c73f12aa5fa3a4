"""`repre neighbors` and the exact search behind it: torch's chunked search against a plain top-k and FAISS."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import last_json, run_cli, save_png
from repre.core import checkpoint_io as ckpt_io
from repre.core.pictures import sheet_size, thumb_side
from repre.core.search import top_k, torch_top_k
from repre.errors import UserError
from repre.use.neighbors import NOTE, QUERY_GAP


@pytest.fixture(scope="module")
def embedded_folder(tiny_run, tmp_path_factory):
    """A flat folder of 12 random images, one of them copied (a.png, a_copy.png), embedded with the tiny run."""
    root = tmp_path_factory.mktemp("neighbors")
    rng = np.random.default_rng(1)
    for i in range(11):
        save_png(root / "imgs" / f"img{i:02d}.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    shutil.copy(root / "imgs" / "img03.png", root / "imgs" / "img03_copy.png")
    out = root / "emb.npy"
    run, _ = tiny_run
    code, _ = run_cli(["embed", "--checkpoint", str(run), "--out", str(out), "--set", "data.name=folder",
                       "--set", f"data.root={root / 'imgs'}"])
    assert code == 0
    return run, out


def neighbors_args(run, emb, out, *extra: str) -> list[str]:
    return ["neighbors", "--checkpoint", str(run), "--embeddings", str(emb), "--out", str(out), *extra]


def test_a_duplicated_image_is_its_copy_s_nearest_neighbour(embedded_folder, tmp_path):
    run, emb = embedded_folder
    rows = [line.split(",")[2] for line in emb.with_suffix(".csv").read_text().splitlines()[1:]]
    query = next(i for i, p in enumerate(rows) if p.endswith("img03.png"))
    code, stdout = run_cli(neighbors_args(run, emb, tmp_path / "nn.png", "--query-index", str(query), "--k", "3"))
    result = last_json(stdout)
    assert code == 0 and result["command"] == "neighbors" and result["k"] == 3
    (q,) = result["queries"]
    assert q["row"] == query and q["path"].endswith("img03.png") and len(q["neighbors"]) == 3
    first = q["neighbors"][0]
    assert first["path"].endswith("img03_copy.png") and first["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert query not in [n["row"] for n in q["neighbors"]]
    sims = [n["similarity"] for n in q["neighbors"]]
    assert sims == sorted(sims, reverse=True)
    with Image.open(tmp_path / "nn.png") as picture:
        # a query and 3 neighbours, 16 px images at 96
        assert picture.size == sheet_size(1, 4, thumb_side(16), True, True, QUERY_GAP, [NOTE])


def test_queries_from_another_file_find_their_image_in_the_bank(embedded_folder, tmp_path, capsys):
    """--query-embeddings: the queries are rows of a second file (other images, one checkpoint); none is left
    out of the bank, so k may be the bank's every row, and the query image's copy in the bank is nearest."""
    run, emb = embedded_folder
    rng = np.random.default_rng(7)
    save_png(tmp_path / "q" / "other.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    shutil.copy(emb.parent / "imgs" / "img05.png", tmp_path / "q" / "same.png")
    queries = tmp_path / "q.npy"
    assert run_cli(["embed", "--checkpoint", str(run), "--out", str(queries), "--set", "data.name=folder",
                    "--set", f"data.root={tmp_path / 'q'}"])[0] == 0
    index = [line.split(",")[2] for line in queries.with_suffix(".csv").read_text().splitlines()[1:]]
    same = next(i for i, p in enumerate(index) if p.endswith("same.png"))
    code, stdout = run_cli(neighbors_args(run, emb, tmp_path / "nn.png", "--query-embeddings", str(queries),
                                          "--query-index", str(same), "--k", "12"))
    result = last_json(stdout)
    assert code == 0 and result["query_embeddings"] == str(queries) and result["embeddings"] == str(emb)
    (q,) = result["queries"]
    assert q["row"] == same and q["path"].endswith("same.png") and len(q["neighbors"]) == 12
    assert q["neighbors"][0]["path"].endswith("img05.png")
    assert q["neighbors"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    with Image.open(tmp_path / "nn.png") as picture:
        assert picture.size[0] == sheet_size(1, 13, thumb_side(16), True, True, QUERY_GAP, [NOTE])[0]

    # the bank again as the queries' file (a copy): the same rows, each query left out of its neighbours
    for suffix in (".npy", ".csv", ".json"):
        shutil.copy(emb.with_suffix(suffix), tmp_path / f"copy{suffix}")
    code, stdout = run_cli(neighbors_args(run, emb, tmp_path / "nn.pdf", "--query-embeddings",
                                          str(tmp_path / "copy.npy"), "--query-index", "3", "--k", "11"))
    assert code == 0 and 3 not in [n["row"] for n in last_json(stdout)["queries"][0]["neighbors"]]
    assert (tmp_path / "nn.pdf").read_bytes().count(b"/Subtype /Image") == 12  # the query and its 11, as a PDF
    card = json.loads((tmp_path / "copy.json").read_text())  # a copy whose card an older repre wrote (no model,
    del card["identity"]["model"]                             # generated images' keys): the same rows still
    card["identity"]["data"]["synthetic_train"] = 5
    (tmp_path / "copy.json").write_text(json.dumps(card))
    code, stdout = run_cli(neighbors_args(run, emb, tmp_path / "nn.png", "--query-embeddings",
                                          str(tmp_path / "copy.npy"), "--query-index", "3", "--k", "11"))
    assert code == 0 and 3 not in [n["row"] for n in last_json(stdout)["queries"][0]["neighbors"]]

    # one checkpoint's embedding of the same folder that skipped an image the bank's read: other rows, each a query
    index = (tmp_path / "copy.csv").read_text().splitlines()
    lines = [f"{row},{line.split(',', 1)[1]}" for row, line in enumerate(index[2:])]  # rows renumbered
    (tmp_path / "copy.csv").write_text("\n".join([index[0], *lines]) + "\n")
    np.save(tmp_path / "copy.npy", np.load(emb)[1:])
    card["progress"]["rows"] -= 1
    (tmp_path / "copy.json").write_text(json.dumps(card))
    code, stdout = run_cli(neighbors_args(run, emb, tmp_path / "nn.png", "--query-embeddings",
                                          str(tmp_path / "copy.npy"), "--query-index", "2", "--k", "11"))
    (q,) = last_json(stdout)["queries"]  # row 2 there is row 3 here (img03.png): left out, its copy nearest
    assert code == 0 and q["index"] == 3 and q["neighbors"][0]["row"] == 4
    assert 3 not in [n["row"] for n in q["neighbors"]] and len(q["neighbors"]) == 11

    card = json.loads(queries.with_suffix(".json").read_text())
    card["identity"]["checkpoint_sha256"] = "0" * 64  # as if another checkpoint had embedded them
    queries.with_suffix(".json").write_text(json.dumps(card))
    assert run_cli(neighbors_args(run, emb, tmp_path / "x.png", "--query-embeddings", str(queries)))[0] == 2
    assert "embed both with the same checkpoint" in capsys.readouterr().err


def test_queries_of_another_subset_of_the_same_images_are_left_out_where_the_bank_holds_them(embedded_folder,
                                                                                             tmp_path):
    """Queries embedded with another data.subset of the bank's images: each was its own nearest neighbour (1.0),
    the share of neighbours of its class inflated. The file's rows are other rows of the same images: a query is
    left out where the bank holds it, and k is at most the bank's other rows."""
    run, emb = embedded_folder
    queries = tmp_path / "q.npy"
    assert run_cli(["embed", "--checkpoint", str(run), "--out", str(queries), "--set", "data.name=folder",
                    "--set", f"data.root={emb.parent / 'imgs'}", "--set", "data.subset=6"])[0] == 0
    index = [line.split(",")[2] for line in queries.with_suffix(".csv").read_text().splitlines()[1:]]
    copy = next(i for i, p in enumerate(index) if p.endswith("img03_copy.png"))  # every other image of 12
    code, stdout = run_cli(neighbors_args(run, emb, tmp_path / "nn.png", "--query-embeddings", str(queries),
                                          "--query-index", str(copy), "--k", "11"))
    (q,) = last_json(stdout)["queries"]
    paths = [n["path"] for n in q["neighbors"]]
    assert code == 0 and len(paths) == 11 and not any(p.endswith("img03_copy.png") for p in paths)
    assert paths[0].endswith("img03.png") and q["neighbors"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert run_cli(neighbors_args(run, emb, tmp_path / "nn.png", "--query-embeddings", str(queries),
                                  "--query-index", str(copy), "--k", "12"))[0] == 2
    # the other way round: the subset is the bank; the query img03.png is not in it, its copy is
    query = next(i for i, p in enumerate(
        line.split(",")[2] for line in emb.with_suffix(".csv").read_text().splitlines()[1:]) if p.endswith("img03.png"))
    code, stdout = run_cli(neighbors_args(run, queries, tmp_path / "nn.png", "--query-embeddings", str(emb),
                                          "--query-index", str(query), "--k", "5"))
    (q,) = last_json(stdout)["queries"]
    assert code == 0 and q["neighbors"][0]["path"].endswith("img03_copy.png")
    code, stdout = run_cli(neighbors_args(run, queries, tmp_path / "nn.png", "--query-embeddings", str(emb),
                                          "--query-index", str(query + 1), "--k", "5"))  # the copy: left out
    (q,) = last_json(stdout)["queries"]
    assert code == 0 and not any(n["path"].endswith("img03_copy.png") for n in q["neighbors"])


def test_a_test_split_s_rows_are_its_own_though_the_card_records_the_run_s_subset():
    """A test split's card records the run's data.subset, which picks among the training images alone: its
    rows are the split's own (there is no selection to map them through)."""
    from types import SimpleNamespace

    from repre.use.neighbors import split_index

    def side(subset, source):
        return SimpleNamespace(index={0: (5, "", None)}, images=SimpleNamespace(source=source),
                               card={"identity": {"data": {"subset": subset}}})

    assert split_index(side(32, SimpleNamespace()), 0) == 5  # the whole test split
    assert split_index(side(32, SimpleNamespace(indices=np.arange(0, 20, 2))), 0) == 10  # a subset of train
    assert split_index(side(None, SimpleNamespace(indices=np.arange(3, 20))), 0) == 5  # a selection, no subset


def test_the_share_of_neighbours_of_their_querys_class():
    from repre.use.neighbors import same_class

    def query(label, *near):
        return {"label": label, "neighbors": [{"label": n} for n in near]}

    assert same_class([query(0, 0, 1, 0), query(2, 2, None)]) == pytest.approx(3 / 4)  # unlabelled ones aside
    assert same_class([query(None, 0, 1)]) is None
    named = {"label": 4, "class": "Coat", "neighbors": [{"label": 1, "class": "Coat"}, {"label": 4, "class": None}]}
    assert same_class([named]) == 1.0  # by name where both are named (two files' labels), else by label
    assert same_class([named], two_files=True) == 1.0  # the pair named on one side alone left out


def test_without_checkpoint_the_images_are_read_as_embed_read_them(embedded_folder, tmp_path):
    """--checkpoint defaults to the checkpoint embed read (its card names it): the same picture."""
    run, emb = embedded_folder
    given = last_json(run_cli(neighbors_args(run, emb, tmp_path / "a.png", "--queries", "2"))[1])
    code, stdout = run_cli(["neighbors", "--embeddings", str(emb), "--out", str(tmp_path / "b.png"), "--queries", "2"])
    assert code == 0 and last_json(stdout)["queries"] == given["queries"]
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_drawn_queries_are_fixed_by_the_seed(embedded_folder, tmp_path):
    run, emb = embedded_folder
    drawn = []
    for name in ("a", "b"):
        code, stdout = run_cli(neighbors_args(run, emb, tmp_path / f"{name}.png", "--queries", "4", "--k", "2"))
        assert code == 0
        drawn.append([q["row"] for q in last_json(stdout)["queries"]])
    assert drawn[0] == drawn[1] and len(set(drawn[0])) == 4
    code, stdout = run_cli(neighbors_args(run, emb, tmp_path / "c.png", "--queries", "4", "--seed", "1"))
    assert code == 0 and [q["row"] for q in last_json(stdout)["queries"]] != drawn[0]
    with Image.open(tmp_path / "a.png") as picture:
        assert picture.size == sheet_size(4, 3, thumb_side(16), True, True, QUERY_GAP, [NOTE])


def random_bank(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)
    return x.numpy()


def test_chunked_torch_search_is_the_plain_top_k(tmp_path):
    bank = np.lib.format.open_memmap(tmp_path / "bank.npy", mode="w+", dtype=np.float32, shape=(2500, 16))
    bank[:] = random_bank(2500, 16)
    queries = torch.from_numpy(random_bank(40, 16, seed=1))
    sims, rows = torch_top_k(bank, queries, 7, chunk=300)  # 9 chunks, the last one short
    expected_sims, expected_rows = (queries @ torch.from_numpy(np.array(bank)).t()).topk(7, dim=1)
    assert torch.equal(rows, expected_rows)
    torch.testing.assert_close(sims, expected_sims)
    with pytest.raises(UserError, match="k=9 neighbours asked of a bank of 5 rows"):
        top_k(random_bank(5, 4), torch.zeros(1, 4), 9)


@pytest.mark.parametrize("extra,message", [
    (["--k", "12"], "k is from 1 to 11"),
    (["--query-index", "3,99"], "--query-index 99 is not a row"),
    (["--query-index", "3,x"], "as integers"),
    (["--query-index", ","], "as integers"),
    (["--queries", "20"], "emb.npy has 12 rows"),
    (["--set", "data.root=/nowhere"], "does not exist"),
    (["--out", "x.jpg"], "must end in .png"),
])
def test_bad_inputs_exit_2_with_what_to_do(embedded_folder, tmp_path, capsys, extra, message):
    run, emb = embedded_folder
    assert run_cli(neighbors_args(run, emb, tmp_path / "x.png", *extra))[0] == 2
    assert message in capsys.readouterr().err


def test_missing_or_unfinished_embeddings_exit_2(embedded_folder, tmp_path, capsys):
    run, emb = embedded_folder
    assert run_cli(neighbors_args(run, tmp_path / "none.npy", tmp_path / "x.png"))[0] == 2
    assert "none.npy does not exist" in capsys.readouterr().err
    shutil.copy(emb, tmp_path / "alone.npy")  # no index or card beside it
    assert run_cli(neighbors_args(run, tmp_path / "alone.npy", tmp_path / "x.png"))[0] == 2
    assert "as `repre embed` writes them" in capsys.readouterr().err
    for suffix in (".npy", ".csv", ".json"):
        shutil.copy(emb.with_suffix(suffix), tmp_path / f"part{suffix}")
    card = json.loads((tmp_path / "part.json").read_text())
    card["progress"]["complete"] = False
    (tmp_path / "part.json").write_text(json.dumps(card))
    assert run_cli(neighbors_args(run, tmp_path / "part.npy", tmp_path / "x.png"))[0] == 2
    assert "rerun the same `repre embed` command" in capsys.readouterr().err


def test_an_image_unreadable_since_embed_is_drawn_grey_and_rows_not_finite_are_refused(embedded_folder, tmp_path,
                                                                                     capsys, repre_log):
    """One image that cannot be read now costs its tile, not the picture (nor a map's minutes of layout); an
    embedding file with NaN rows (written before embed refused them) is refused by neighbors and map."""
    run, emb = embedded_folder
    shutil.copytree(emb.parent / "imgs", tmp_path / "imgs")
    for suffix in (".npy", ".csv", ".json"):
        shutil.copy(emb.with_suffix(suffix), tmp_path / f"e{suffix}")
    csv_path = tmp_path / "e.csv"
    csv_path.write_text(csv_path.read_text().replace(str(emb.parent / "imgs"), str(tmp_path / "imgs")))
    (tmp_path / "imgs" / "img00.png").write_bytes((tmp_path / "imgs" / "img00.png").read_bytes()[:100])
    args = neighbors_args(run, tmp_path / "e.npy", tmp_path / "n.png", "--query-index", "0", "--k", "2",
                          "--set", f"data.root={tmp_path / 'imgs'}")
    assert run_cli(args)[0] == 0 and (tmp_path / "n.png").is_file()
    assert "image 0 cannot be read now" in repre_log.text and "drawn grey" in repre_log.text
    rows = np.load(tmp_path / "e.npy", mmap_mode="r+")
    rows[3] = np.nan
    rows.flush()
    assert run_cli(args)[0] == 2
    assert "the embeddings hold rows that are not finite" in capsys.readouterr().err
    assert run_cli(["map", "--embeddings", str(tmp_path / "e.npy"), "--out", str(tmp_path / "m.png")])[0] == 2
    assert "the embeddings hold rows that are not finite" in capsys.readouterr().err


def test_the_picture_takes_at_most_its_queries_and_neighbours(embedded_folder, tmp_path, capsys, monkeypatch):
    import repre.use.neighbors

    run, emb = embedded_folder
    monkeypatch.setattr(repre.use.neighbors, "MAX_QUERIES", 2)
    # the range said is the one taken (it said "from 1 to 12", the rows, and 12 was then refused)
    assert run_cli(neighbors_args(run, emb, tmp_path / "x.png", "--queries", "3"))[0] == 2
    assert "--queries 3: the picture draws at most 2, a row each, so from 1 to 2" in capsys.readouterr().err
    assert run_cli(neighbors_args(run, emb, tmp_path / "x.png", "--query-index", "0,1,2"))[0] == 2
    assert "3 queries: the picture draws at most 2, a row each" in capsys.readouterr().err
    monkeypatch.setattr(repre.use.neighbors, "MAX_K", 4)
    assert run_cli(neighbors_args(run, emb, tmp_path / "x.png", "--k", "5"))[0] == 2
    assert "the picture takes at most 4 neighbours a query, so k is from 1 to 4" in capsys.readouterr().err


def test_a_run_that_trained_on_since_embed_still_draws_its_images(tiny_run, tmp_path, repre_log):
    """The card names the run's last.pt for the images' data config, which stays when the run trains on and
    prunes the step file the rows were made from: drawn, with a warning."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    assert run_cli(["embed", "--checkpoint", str(run), "--out", str(tmp_path / "e.npy")])[0] == 0
    checkpoints = run / "checkpoints"
    # the run went on: its last.pt another step's (as a run links it), the rows' step file pruned
    ckpt_io.link_atomic(checkpoints / "step-00000010.pt", checkpoints / "last.pt")
    for step_file in checkpoints.glob("step-00000020.*"):
        step_file.unlink()
    args = ["neighbors", "--embeddings", str(tmp_path / "e.npy"), "--out", str(tmp_path / "n.png"), "--queries", "2"]
    code, stdout = run_cli(args)
    assert code == 0 and (tmp_path / "n.png").is_file()
    assert "the embeddings were made from this file before the run went on" in repre_log.text
    assert re.search(r"query \d+ label \d+: \d+ label \d+ \(", stdout)  # generated images: their labels (were blank)


def test_images_that_changed_since_embed_are_refused(embedded_folder, tmp_path, capsys):
    run, emb = embedded_folder
    for suffix in (".npy", ".csv", ".json"):
        shutil.copy(emb.with_suffix(suffix), tmp_path / f"moved{suffix}")
    csv_path = tmp_path / "moved.csv"
    csv_path.write_text(csv_path.read_text().replace("img", "IMG"))
    assert run_cli(neighbors_args(run, tmp_path / "moved.npy", tmp_path / "x.png", "--query-index", "0"))[0] == 2
    assert "the data changed since embed" in capsys.readouterr().err


def test_a_relative_data_root_is_found_from_another_directory(tiny_run, tmp_path, monkeypatch):
    """embed given `data.root=imgs` (relative) read the images there; neighbors run from elsewhere reads the
    same images, not ./imgs of its own directory; fewer rows than the 8 default queries: every row a query."""
    run, _ = tiny_run
    rng = np.random.default_rng(2)
    for i in range(5):
        save_png(tmp_path / "imgs" / f"{i}.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    monkeypatch.chdir(tmp_path)
    assert run_cli(["embed", "--checkpoint", str(run), "--out", "e.npy", "--set", "data.name=folder",
                    "--set", "data.root=imgs"])[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, stdout = run_cli(["neighbors", "--embeddings", str(tmp_path / "e.npy"), "--out", "nn.png", "--k", "2"])
    assert code == 0 and len(last_json(stdout)["queries"]) == 5


def test_a_moved_folder_is_read_where_data_root_names_it(tmp_path, image_folder, capsys):
    """A folder moved since embed, named by --set data.root: its paths were compared with the index's whole
    ("the data changed since embed") and the run's data.subset was dropped (24 images against the 10 embedded):
    the same images under the new root are drawn now; another file there is still refused."""
    from conftest import pretrain_args

    run = tmp_path / "run"
    assert run_cli(pretrain_args(run, "data.name=folder", f"data.root={image_folder}", "data.subset=10",
                                 "train.batch_size=8", "train.max_steps=2", "train.eval_every=0"))[0] == 0
    assert run_cli(["embed", "--checkpoint", str(run), "--out", str(tmp_path / "e.npy")])[0] == 0
    moved = tmp_path / "moved"
    shutil.move(image_folder, moved)
    args = ["neighbors", "--embeddings", str(tmp_path / "e.npy"), "--out", str(tmp_path / "n.png"), "--k", "2",
            "--set", f"data.root={moved}"]
    assert run_cli(args[:-2])[0] == 2  # without --set data.root: where it went is asked for
    assert (f"{image_folder}, the data {tmp_path / 'e.npy'} were made from, is gone: where the same images are now "
            "(a moved or copied folder), give --set data.root=THERE") in capsys.readouterr().err
    code, stdout = run_cli(args)
    assert code == 0 and len(last_json(stdout)["queries"]) == 8
    (moved / "train" / "cat" / "0.png").rename(moved / "train" / "cat" / "00.png")  # another file list
    assert run_cli([*args, "--query-index", "0"])[0] == 2
    assert f"({moved}/train/cat/0.png under the data.root given): the data changed" in capsys.readouterr().err


def test_queries_read_from_a_memory_map_are_searched_without_a_warning(tmp_path):
    """python.md's `top_k(bank, np.asarray(bank[:2]), k)` on `np.load(..., mmap_mode="r")` warned of a
    non-writable array (torch's); the rows are copied."""
    import warnings

    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    np.save(tmp_path / "e.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
    bank = np.load(tmp_path / "e.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sims, rows = top_k(bank, np.asarray(bank[:2]), 3)
    assert rows[:, 0].tolist() == [0, 1]
    assert top_k(bank, np.asarray(bank[:2]).tolist(), 3)[1][:, 0].tolist() == [0, 1]  # a list, as before


def test_generated_images_are_drawn_with_the_seed_they_were_embedded_with(tiny_run, tmp_path):
    """A --checkpoint of a run with another train.seed drew other generated images beside the rows."""
    from repre.pretrained import load_checkpoint_config
    from repre.use.embed import embed_source
    from repre.use.images import embedded_source

    run, _ = tiny_run
    assert run_cli(["embed", "--checkpoint", str(run), "--out", str(tmp_path / "e.npy")])[0] == 0
    card = json.loads((tmp_path / "e.json").read_text())
    _, cfg = load_checkpoint_config(run / "checkpoints" / "last.pt", weights=False)
    embedded = cfg.train.seed
    assert card["identity"]["data_seed"] == embedded
    card["identity"]["data_seed"] = embedded + 1  # as a run of that seed embeds them
    drawn = embedded_source(None, card, []).source.load(0)[0]
    cfg.train.seed = embedded + 1
    assert np.array_equal(np.asarray(drawn), np.asarray(embed_source(cfg, "train").load(0)[0]))
    cfg.train.seed = embedded
    assert not np.array_equal(np.asarray(drawn), np.asarray(embed_source(cfg, "train").load(0)[0]))
