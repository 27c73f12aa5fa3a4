"""The attention kernel of a training forward on a CPU: timm's unfused path under bf16 autocast, the same
function; momentum encoders and evaluations keep the fused kernel."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from repre.core.runtime import Runtime
from repre.engine.trainer import Trainer
from repre.eval.finetune import finetune_eval
from repre.models.attention import training_attention
from repre.models.backbone import Backbone, resolve_arch

CPU = torch.device("cpu")


def encoder(arch: str) -> Backbone:
    """Every attention module on the fused path (timm's own default for Swin is the unfused one)."""
    torch.manual_seed(0)
    model = Backbone(*resolve_arch(arch, 16, 0.0, {}))
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    return model


def fused_flags(model: torch.nn.Module) -> list[bool]:
    return [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]


@pytest.fixture
def sdpa_calls(monkeypatch) -> list[bool]:
    """One entry per call of PyTorch's fused attention: whether autograd recorded it (a training forward)."""
    calls: list[bool] = []
    sdpa = F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    return calls


@pytest.mark.parametrize("arch", ["vit_pico_patch4", "swin_pico_patch2_window4"])
def test_unfused_path_on_a_cpu_under_bf16_only_and_put_back(arch):
    online = encoder(arch)
    next(m for m in online.modules() if hasattr(m, "fused_attn")).fused_attn = False  # as it was, kept
    momentum = copy.deepcopy(online).requires_grad_(False)
    model = torch.nn.ModuleDict({"online": online, "momentum": momentum})
    before = fused_flags(online)
    assert len(before) == 6
    with training_attention(model, CPU, torch.bfloat16):
        assert not any(fused_flags(online))
        assert fused_flags(momentum) == before  # forward only: the fused kernel is the faster one
    assert fused_flags(online) == before
    for device, dtype in [(CPU, torch.float32), (torch.device("cuda"), torch.bfloat16)]:
        with training_attention(model, device, dtype):
            assert fused_flags(online) == before
    with pytest.raises(RuntimeError), training_attention(model, CPU, torch.bfloat16):
        raise RuntimeError("a failed forward")
    assert fused_flags(online) == before


@pytest.mark.parametrize("arch", ["vit_pico_patch4", "swin_pico_patch2_window4"])
def test_unfused_path_computes_the_same_outputs_and_gradients(arch, sdpa_calls):
    """In fp64 the two paths agree to rounding: Swin's shifted windows add its mask on both."""
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    results = []
    for dtype in (torch.float32, torch.bfloat16):  # the unfused path when dtype is bf16 on a CPU
        model = encoder(arch).double()
        sdpa_calls.clear()
        with training_attention(model, CPU, dtype):
            pooled, maps = model(x, taps=[model.num_units - 1])
        (pooled.square().sum() + maps[0].sum()).backward()
        assert len(sdpa_calls) == (6 if dtype == torch.float32 else 0)
        results.append((pooled, [p.grad for p in model.parameters()]))
    (fused, fused_grads), (unfused, unfused_grads) = results
    torch.testing.assert_close(unfused, fused, rtol=1e-10, atol=1e-12)
    for a, b in zip(unfused_grads, fused_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_a_bf16_training_step_on_a_cpu_trains_unfused_and_evaluates_fused(sdpa_calls, tmp_path):
    trainer = Trainer(tiny_config("train.precision=bf16"), tmp_path / "run")
    batch = next(iter(trainer.data.loader(0, False)))
    trainer.train_step(trainer.data.to_device(batch))
    assert sdpa_calls and not any(sdpa_calls)  # the momentum encoder's forward only, without autograd
    sdpa_calls.clear()
    trainer.model.eval()
    with torch.no_grad():
        trainer.model.method.encoder(batch["views"][:2, 0])
    assert len(sdpa_calls) == 4  # an evaluation: the online encoder on the fused kernel again


def test_a_bf16_step_with_checkpointed_blocks_trains_as_without(tmp_path):
    """model.grad_checkpointing runs each block's forward again in the backward, which took the fused path
    there: torch refused the recomputed values (a crash at the first step of every bf16 CPU run of a ViT)."""
    losses, grads = [], []
    for on in (False, True):
        trainer = Trainer(tiny_config("train.precision=bf16", f"model.grad_checkpointing={str(on).lower()}"),
                          tmp_path / str(on))
        batch = trainer.data.to_device(next(iter(trainer.data.loader(0, False))))
        losses.append(trainer.train_step(batch)["loss"])
        grads.append([p.grad for p in trainer.model.method.encoder.parameters() if p.grad is not None])
    assert torch.equal(losses[0], losses[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bf16_fine_tuning_on_a_cpu_trains_unfused(sdpa_calls):
    cfg = tiny_config("eval.finetune.steps=2", "eval.finetune.train_subset=16", "eval.finetune.batch_size=8",
                      "eval.finetune.test_subset=8")
    torch.manual_seed(0)
    model = Backbone(*resolve_arch(cfg.model.arch, cfg.data.image_size, 0.0, cfg.model.kwargs))
    finetune_eval(model, cfg, Runtime(device=CPU, precision="bf16"))
    assert sdpa_calls and not any(sdpa_calls)  # the test split's forward only
