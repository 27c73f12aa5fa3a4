"""`repre.branch.ReconstructionBranch`: the presets' branch as a block for any loop, and the example with lightly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch

from conftest import SWIN_TINY, tiny_config
from repre.branch import ReconstructionBranch
from repre.builder import build_model
from repre.core import checkpoint_io
from repre.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def tiny_vit() -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=4,
                             num_heads=2, num_classes=0)


def test_the_branch_owns_the_decoder_only_and_shares_the_encoders_forward():
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    branch = ReconstructionBranch(vit, taps=2, width=16)
    own = {id(p) for p in branch.parameters()}
    assert own == {id(p) for p in branch.decoder.parameters()} and not own & {id(p) for p in vit.parameters()}
    x = torch.randn(3, 3, 16, 16)
    pooled, maps = branch.encode(x)
    torch.testing.assert_close(pooled, vit(x))  # the model's own embedding
    assert branch.taps == [1, 3] and [m.shape for m in maps] == [(3, 32, 4, 4)] * 2
    torch.testing.assert_close(branch(x), branch.loss(maps, x))
    branch(x).backward()
    assert vit.blocks[0].attn.qkv.weight.grad is not None  # the loss trains the encoder too


def test_a_compiled_loss_follows_a_copy_of_the_branch():
    """`compile_loss` compiles a function of the branch: a copy made after compiling computes with its own
    decoder (a loss bound to the first instance would use that one's weights). Dynamo's capture without code
    generation (backend "eager"), for seconds on a CPU."""
    import copy

    torch.manual_seed(0)
    branch = ReconstructionBranch(tiny_vit().eval(), taps=2, width=16)
    x = torch.randn(2, 3, 16, 16)
    _, maps = branch.encode(x)
    eager = branch.loss(maps, x)
    torch._dynamo.reset()
    try:
        branch.compile_loss(backend="eager")
        twin = copy.deepcopy(branch)
        assert twin._compiled_loss is branch._compiled_loss  # compiled once, kept by the copy (pickling leaves it)
        with torch.no_grad():
            twin.decoder.head.bias.add_(1.0)
        torch.testing.assert_close(branch.loss(maps, x), eager)
        assert not torch.allclose(twin.loss(maps, x), eager)
        torch.testing.assert_close(twin.loss(maps, x), type(twin)._loss(twin, maps, x, None))
    finally:
        torch._dynamo.reset()


def test_the_branch_takes_a_swin():
    cfg = tiny_config(*SWIN_TINY)
    swin = build_model(cfg).method.encoder.model
    with pytest.raises(UserError, match=r"out_stride=4 is coarser than the encoder's finest tapped map \(stride 2\)"):
        ReconstructionBranch(swin, taps=3, width=16)  # patch 2: its first stage is finer than the default stride
    branch = ReconstructionBranch(swin, taps=3, width=16, out_stride=2)
    loss = branch(torch.randn(2, 3, cfg.data.image_size, cfg.data.image_size))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_the_presets_train_this_branch():
    """RePre holds a ReconstructionBranch: the same decoder, the same loss."""
    torch.manual_seed(0)
    model = build_model(tiny_config())
    assert isinstance(model.branch, ReconstructionBranch)
    assert model.branch.backbone is model.method.encoder
    views = torch.randn(4, 2, 3, 16, 16)
    out = model(views, 0.99)
    x = torch.cat([views[:, 0], views[:, 1]])
    torch.testing.assert_close(out["loss_recon"], model.branch(x), rtol=1e-5, atol=1e-6)


def test_checkpoints_that_name_the_decoder_at_the_top_still_load(tmp_path):
    """repre 0.1 wrote `decoder.*`; the branch's weights are `branch.decoder.*` now."""
    model = build_model(tiny_config())
    state = {k.removeprefix("branch."): v for k, v in model.state_dict().items()}
    assert any(k.startswith("decoder.") for k in state)
    path = tmp_path / "old.pt"
    checkpoint_io.save({"schema": checkpoint_io.SCHEMA, "model": state, "config": {}}, path)
    fresh = build_model(tiny_config())
    fresh.load_state_dict(checkpoint_io.load(path)["model"])  # strict
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@pytest.mark.filterwarnings("ignore::FutureWarning")  # lightly's DINO head uses torch's old weight_norm
def test_the_lightly_example_trains_and_its_reconstruction_loss_falls():
    spec = importlib.util.spec_from_file_location("lightly_dino", EXAMPLES / "lightly_dino.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    images = torch.zeros(8, 3, 32, 32)
    for i, x in enumerate(images):
        x[i % 3, 8 : 16 + i, 4 : 20 + i] = 1.0
    losses = example.train((images - 0.5) / 0.5, steps=8)
    assert len(losses) == 8 and losses[-1] < 0.9 * losses[0]
