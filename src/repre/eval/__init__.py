"""Evaluation of a pre-trained encoder: `evaluate(task, checkpoint)`; k-NN now, the rest with issue 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repre.builder import build_encoder
from repre.config import Config, deep_update, config_from_dict, parse_overrides
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
    missing, unexpected = encoder.model.load_state_dict(state, strict=False)
    if missing or unexpected or not state:
        raise UserError(
            f"checkpoint {checkpoint} does not match its config's encoder {cfg.model.arch}: "
            f"{len(missing)} missing and {len(unexpected)} unexpected weights (e.g. {(missing or unexpected or ['-'])[0]})"
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
