"""Evaluation of a pre-trained encoder: `evaluate(task, checkpoint)`; k-NN now, the rest with issue 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repre.builder import build_encoder
from repre.config import Config, config_from_dict, deep_update, parse_overrides
from repre.engine import checkpoint as ckpt_io
from repre.engine.runtime import setup_runtime
from repre.errors import UserError
from repre.models.backbone import Backbone

TASKS = ("knn", "linear", "finetune", "segment", "recon")
AVAILABLE = ("knn",)


def load_encoder(checkpoint: str | Path, overrides: list[str] | None = None) -> tuple[Backbone, Config]:
    """The online encoder of a checkpoint (what export writes) and its config with `overrides` applied."""
    ckpt = ckpt_io.load(checkpoint)
    raw = ckpt["config"]
    deep_update(raw, parse_overrides(overrides or []))
    cfg = config_from_dict(raw)
    encoder = build_encoder(cfg)
    state = ckpt_io.encoder_state(ckpt)
    try:
        missing, unexpected = encoder.model.load_state_dict(state, strict=False)
        problem = f"{len(missing)} missing and {len(unexpected)} unexpected weights" if missing or unexpected else ""
    except RuntimeError as exc:  # shape mismatches
        problem = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:200])
    if problem or not state:
        raise UserError(
            f"checkpoint {checkpoint} does not match the encoder {cfg.model.arch} of the config used to "
            f"evaluate it ({problem or 'no encoder weights'}); drop --set overrides of model.* or pick the right checkpoint"
        )
    return encoder, cfg


def evaluate(task: str, checkpoint: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run evaluation `task` on a checkpoint or run directory -> {"task", "metric", "value", "extra"}."""
    if task not in AVAILABLE:
        raise UserError(f"`repre eval {task}` arrives with the evaluation issue; available now: {', '.join(AVAILABLE)}")
    encoder, cfg = load_encoder(checkpoint, overrides)
    rt = setup_runtime(cfg.train)
    encoder.to(rt.device)
    from repre.eval.knn import knn_eval

    result = knn_eval(encoder, cfg, rt)
    top1 = result.pop("top1")
    return {"task": "knn", "metric": "top1", "value": top1, "extra": result}
