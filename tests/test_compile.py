"""train.compile: which modules are compiled, the run's graph limit, and a compiled run equal to the eager one."""

import json

import pytest
import torch

from conftest import DINO_TINY, SWIN_TINY, pretrain_args, run_cli, tiny_config
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
        # the compiling first step's compute is timed apart (compile_s), out of train_s and the speeds (not
        # compared with train_s: a loaded machine's steps can take longer than a compilation without code)
        assert (summary["compile_s"] > 0) == ("train.compile=true" in extra)
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


def real_stride_differences(module: torch.nn.Module) -> list[tuple]:
    """Parameters whose gradient's strides differ from their own on a dimension longer than 1 (a layout that
    differs: a copy into DDP's bucket each step)."""
    return [(name, tuple(p.shape), p.grad.stride(), p.stride()) for name, p in module.named_parameters()
            if p.grad is not None and any(n > 1 and a != b for n, a, b in zip(p.shape, p.grad.stride(), p.stride(),
                                                                                strict=True))]


def test_inductor_gives_the_branch_gradients_the_parameters_layout():
    """Inductor (torch.compile's default backend, generated code) returns a 1x1 convolution's weight gradient
    (the decoder's head, a Swin's laterals) with other strides on its size-1 dimensions: no memory layout
    differs, which is why run_settings silences DDP's warning about it. Any other stride difference would be a
    real one, and a copy each step. (The whole model's compiled units: the slow test below.)"""
    from repre.branch import ReconstructionBranch
    from repre.models.backbone import Backbone, resolve_arch

    swin = Backbone(*resolve_arch("swin_pico_patch2_window4", 16, 0.0, {}))
    torch._dynamo.reset()
    try:
        branch = ReconstructionBranch(swin, taps=2, width=16)
        branch.compile_loss()
        x = torch.randn(2, 3, 16, 16)
        _, maps = branch.encode(x)
        branch.loss(maps, x).backward()
    finally:
        torch._dynamo.reset()
    assert real_stride_differences(branch) == []


ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow),  # 70-130 s on 2 cores
                                    pytest.param("cuda", marks=ON_CUDA)])  # where DDP's warning is silenced too
@pytest.mark.parametrize("extra", [[], SWIN_TINY], ids=["vit", "swin"])
def test_inductor_gives_every_gradient_of_a_compiled_model_its_parameter_s_layout(extra, device):
    """As above for every compiled unit (the encoders' blocks, the branch's loss) of a whole model, on the
    device and in the precision a run there takes (a GPU: bf16 autocast, Triton's kernels)."""
    cfg = tiny_config(*extra, "train.compile=true")
    model = build_model(cfg).to(device)
    torch._dynamo.reset()
    try:
        compile_units(model)
        size = cfg.data.image_size
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(torch.randn(2, 2, 3, size, size, device=device), 0.99)["loss"]
        loss.backward()
    finally:
        torch._dynamo.reset()
    assert real_stride_differences(model) == []


def test_run_settings_silence_ddp_s_stride_warning_under_compile_alone():
    import warnings

    from repre.core.runtime import GRAD_STRIDES_WARNING

    def warned(*overrides):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with run_settings(tiny_config(*overrides), torch.device("cpu")):
                warnings.warn(f"{GRAD_STRIDES_WARNING}. This may indicate ...", UserWarning, stacklevel=1)
        return len(seen)

    assert warned("train.compile=true") == 0 and warned() == 1
