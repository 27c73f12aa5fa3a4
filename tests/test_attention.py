"""The attention kernel of training on a CPU: timm's unfused path under bf16 autocast, the same function."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from repre.engine.trainer import Trainer
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


@pytest.mark.parametrize("arch", ["vit_pico_patch4", "swin_pico_patch2_window4"])
def test_unfused_path_on_a_cpu_under_bf16_only_and_put_back(arch):
    model = encoder(arch)
    next(m for m in model.modules() if hasattr(m, "fused_attn")).fused_attn = False  # as it was, kept
    before = fused_flags(model)
    assert len(before) == 6
    with training_attention(model, CPU, torch.bfloat16):
        assert not any(fused_flags(model))
    assert fused_flags(model) == before
    for device, dtype in [(CPU, torch.float32), (torch.device("cuda"), torch.bfloat16)]:
        with training_attention(model, device, dtype):
            assert fused_flags(model) == before


@pytest.mark.parametrize("arch", ["vit_pico_patch4", "swin_pico_patch2_window4"])
def test_unfused_path_computes_the_same_outputs_and_gradients(arch, monkeypatch):
    """In fp64 the two paths agree to rounding: Swin's shifted windows add its mask on both."""
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    results, calls = [], []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    for dtype in (torch.float32, torch.bfloat16):  # the unfused path when dtype is bf16 on a CPU
        model = encoder(arch).double()
        calls.clear()
        with training_attention(model, CPU, dtype):
            pooled, maps = model(x, taps=[model.depth - 1])
            (pooled.square().sum() + maps[0].sum()).backward()
        assert len(calls) == (6 if dtype == torch.float32 else 0)
        results.append((pooled, [p.grad for p in model.parameters()]))
    (fused, fused_grads), (unfused, unfused_grads) = results
    torch.testing.assert_close(unfused, fused, rtol=1e-10, atol=1e-12)
    for a, b in zip(unfused_grads, fused_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_a_bf16_training_step_on_a_cpu_does_not_call_the_fused_kernel(monkeypatch):
    trainer = Trainer(tiny_config("train.precision=bf16"), Path(tempfile.mkdtemp()) / "run")
    batch = next(iter(trainer.data.loader(0, False)))
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    with trainer.settings():
        trainer.train_step(batch)
    assert not calls
    trainer.model.eval()
    with torch.no_grad():
        trainer.model.method.encoder(batch["views"][:2, 0])
    assert calls  # outside the step (evaluations) the fused kernel is back
