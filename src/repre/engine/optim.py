"""The optimizer of pre-training, its state from a checkpoint, and the gradient clipping of its step."""

from __future__ import annotations

from typing import Any

import torch

from repre.core import compat
from repre.errors import UserError
from repre.reconstruction import PretrainingModel


def build_optimizer(model: PretrainingModel, weight_decay: float, lr: float, fused: bool) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (`param_groups`: which parameters decay is the method's rule);
    `fused`: one kernel for the whole update (a GPU, or the device-side non-finite guard)."""
    return torch.optim.AdamW(model.param_groups(weight_decay), lr=lr, fused=fused or None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """A checkpoint's optimizer state, with this run's `fused` choice (device, host_sync), not the checkpointed
    run's: a run may resume on another device. Groups of other sizes than this run's raise UserError."""
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    was = [len(g["params"]) for g in saved["param_groups"]]
    if sizes != was:  # the checkpoint's run gave other parameters weight decay (another version's rule)
        raise UserError(
            f"the checkpoint's optimizer has parameter groups of {was} tensors, this version of repre builds "
            f"{sizes} (which parameters get weight decay changed; docs/training.md): resume it with the "
            "version that wrote it, or start a new --out with `--init-from` this run (its weights; a fresh "
            "optimizer state)")
    fused = [g.get("fused") for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, was_fused in zip(optimizer.param_groups, fused, strict=True):
        group["fused"] = was_fused
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if torch.is_tensor(state.get("step")):  # fused keeps step on the parameter's device, else on the CPU
                state["step"] = state["step"].to(p.device if was_fused else "cpu", torch.float32)


def clip_or_measure(params: list[torch.Tensor], max_norm: float, mode: str = "global") -> torch.Tensor:
    """Clip gradients to `max_norm` (> 0), or only measure them (clip_grad_norm_ with an infinite bound still
    rescales every gradient: many times the cost of measuring their norm). Returns the global norm before clipping.

    mode "global": one factor for all gradients (torch's clip_grad_norm_); "per_param": each tensor's gradient
    scaled by max_norm / (its norm + 1e-6) when that is below 1 (the official DINO code).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if max_norm > 0 and mode == "global":
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    if max_norm > 0:  # per_param
        compat.scale_each_(grads, (max_norm / (norms + 1e-6)).clamp(max=1.0))
    return torch.linalg.vector_norm(norms)
