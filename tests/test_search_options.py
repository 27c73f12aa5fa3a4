"""The options the quality search varies: eval.split=val, the lambda schedule, decoder depth, train.compile."""

import json

import numpy as np
import pytest
import torch
from test_data import write_idx

from conftest import last_json, pretrain_args, run_cli, tiny_config
from repre.builder import build_model
from repre.core.runtime import run_settings
from repre.data.sources import eval_source, val_split
from repre.engine.compile import compile_blocks
from repre.errors import UserError
from repre.models.decoder import ConvBlock, Decoder
from repre.pretraining import pretrain


def test_val_split_is_fixed_disjoint_and_covers_sorted_classes():
    train, val = val_split(100, 20)
    again = val_split(100, 20)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert len(train) == 80 and len(val) == 20 and not set(train.tolist()) & set(val.tolist())
    labels = torch.arange(100) // 50  # a class-sorted folder: two classes, in order
    assert set(labels[val].tolist()) == {0, 1}
    with pytest.raises(UserError, match="val_size"):
        val_split(10, 10)


def test_eval_split_val_never_reads_the_test_split(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, size=(40, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "fm", imgs, (np.arange(40) % 10).astype(np.uint8), "train")  # no t10k files at all
    cfg = tiny_config("data.name=fashion-mnist", f"data.root={tmp_path / 'fm'}", "data.image_size=28",
                      "eval.split=val", "eval.val_size=8")
    train, val = eval_source(cfg, "train"), eval_source(cfg, "test")
    assert len(train) == 32 and len(val) == 8
    with pytest.raises(UserError):  # the test split is missing: only split=test would need it
        eval_source(tiny_config("data.name=fashion-mnist", f"data.root={tmp_path / 'fm'}"), "test")


def test_eval_knn_on_val_through_the_cli(tiny_run):
    out, _ = tiny_run
    code, stdout = run_cli(["eval", "knn", "--checkpoint", str(out), "--set", "eval.split=val",
                            "--set", "eval.val_size=16"])
    result = last_json(stdout)
    assert code == 0 and result["extra"]["queries"] == 16 and result["extra"]["bank"] == 64 - 16


def test_lambda_schedule_is_logged_and_follows_a_cosine(tmp_path):
    cfg = tiny_config("recon.weight=2.0", "recon.weight_end=0.0", "train.max_steps=8", "train.log_every=1",
                      "eval.knn.enabled=false")
    pretrain(cfg, tmp_path / "r")
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    weights = [r["recon_weight"] for r in lines if r["kind"] == "train"]
    assert weights[0] == pytest.approx(2.0) and all(a > b for a, b in zip(weights, weights[1:], strict=False))
    assert weights[-1] == pytest.approx(2.0 * 0.5 * (1 + np.cos(np.pi * 7 / 8)))


def test_decoder_depth_adds_blocks_at_the_encoder_resolution():
    maps = [torch.randn(2, 16, 4, 4)]
    shallow, deep = Decoder([16], 4, width=8, depth=1), Decoder([16], 4, width=8, depth=3)
    assert len(shallow.refine) == 0 and len(deep.refine) == 2 and isinstance(deep.refine[0], ConvBlock)
    assert deep(maps, (16, 16)).shape == shallow(maps, (16, 16)).shape == (2, 3, 16, 16)


def test_compile_wraps_blocks_and_decoder_and_keeps_names(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append((type(self).__name__, k)))
    cfg = tiny_config("train.compile=true")
    model = build_model(cfg)
    names = list(model.state_dict())
    compile_blocks(model)
    limit = torch._dynamo.config.recompile_limit
    with run_settings(cfg, torch.device("cpu")):  # Dynamo's graph limit per unit, raised while the run trains
        assert torch._dynamo.config.recompile_limit >= 32
    assert torch._dynamo.config.recompile_limit == limit  # and put back after it
    kinds = [name for name, _ in compiled]
    assert kinds.count("Block") == 2 * 4 and kinds.count("Decoder") == 1  # online + momentum, 4 blocks
    assert all(k == {"dynamic": False} for _, k in compiled)  # one static graph per shape
    assert list(model.state_dict()) == names


def test_compiled_dino_run_equals_the_eager_run(tmp_path, monkeypatch):
    """train.compile=true through the CLI on DINO + RePre (multi-crop: two token counts; k-NN and the recon grid
    at the end), with dynamo's graph capture but no code generation (backend "eager", seconds instead of minutes
    on a CPU): the same per-step losses as the eager run."""
    from test_dino import DINO_TINY

    def run(out, *extra):
        assert run_cli(pretrain_args(out, *DINO_TINY, "train.max_steps=3", "train.log_every=1",
                                     "model.drop_path=0.0", "train.precision=fp32", *extra))[0] == 0
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [x["loss"] for x in lines if "loss" in x and x.get("kind") != "eval"]

    eager = run(tmp_path / "eager")
    compile_ = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **k: compile_(self, backend="eager", **k))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        compiled = run(tmp_path / "compiled", "train.compile=true")
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    assert graphs >= 3  # captured: the blocks at two token counts (global, local crops) and the decoder
    assert len(eager) == 3 and compiled == pytest.approx(eager, rel=1e-5)
