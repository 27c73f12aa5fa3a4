"""train.compile: which modules are compiled, the run's graph limit, and a compiled run equal to the eager one."""

import json

import pytest
import torch

from conftest import DINO_TINY, pretrain_args, run_cli, tiny_config
from repre.builder import build_model
from repre.core.runtime import run_settings
from repre.engine.compile import compile_units


def test_compile_wraps_blocks_and_the_branch_loss_and_keeps_names(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **k: compiled.append((fn.__qualname__, k)) or fn)
    cfg = tiny_config("train.compile=true")
    model = build_model(cfg)
    names = list(model.state_dict())
    compile_units(model)
    limit = torch._dynamo.config.recompile_limit
    with run_settings(cfg, torch.device("cpu")):  # Dynamo's graph limit per unit, raised while the run trains
        assert torch._dynamo.config.recompile_limit >= 32
    assert torch._dynamo.config.recompile_limit == limit  # and put back after it
    kinds = [name for name, _ in compiled]
    # online + momentum, 4 blocks each; the branch's loss with the decoder inside it
    assert kinds.count("Module._call_impl") == 2 * 4 and kinds.count("ReconstructionBranch._loss") == 1
    assert len(kinds) == 9
    assert all(k == {"dynamic": False} for _, k in compiled)  # one static graph per shape
    assert list(model.state_dict()) == names


def test_compiled_dino_run_equals_the_eager_run(tmp_path, monkeypatch):
    """train.compile=true through the CLI on DINO + RePre (multi-crop: two token counts; k-NN and the recon grid
    at the end; the loss-balance diagnostics at step 2, two gradients from one compiled graph), with dynamo's
    graph capture and AOTAutograd's forward and backward graphs but no code generation (backend "aot_eager",
    seconds instead of minutes on a CPU): the same per-step losses as the eager run."""
    def run(out, *extra):
        assert run_cli(pretrain_args(out, *DINO_TINY, "train.max_steps=3", "train.log_every=1",
                                     "train.diagnose_every=2", "model.drop_path=0.0", "train.precision=fp32",
                                     *extra))[0] == 0
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        train = [x for x in lines if "loss" in x and x.get("kind") != "eval"]
        summary = json.loads((out / "summary.json").read_text())
        batch = tiny_config().train.batch_size
        assert summary["images_per_sec"] == pytest.approx(3 * batch / summary["train_s"], rel=0.02)
        # the compiling first step's compute is timed apart (compile_s), out of train_s and the speeds
        assert (summary["compile_s"] > summary["train_s"]) == ("train.compile=true" in extra)
        return [x["loss"] for x in train]

    eager = run(tmp_path / "eager")
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **k: compile_(fn, backend="aot_eager", **k))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        compiled = run(tmp_path / "compiled", "train.compile=true")
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    assert graphs >= 3  # captured: the blocks at two token counts (global, local crops) and the branch's loss
    assert len(eager) == 3 and compiled == pytest.approx(eager, rel=1e-5)
