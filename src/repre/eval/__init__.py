"""Evaluation of a pre-trained checkpoint: `evaluate(task, checkpoint)` -> {"task", "metric", "value", "extra"}."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repre.builder import build_encoder, build_model
from repre.config import (
    EVAL_TASKS,
    Config,
    DataConfig,
    config_from_dict,
    deep_update,
    flatten,
    migrate,
    parse_overrides,
)
from repre.core import checkpoint_io as ckpt_io
from repre.core import dist
from repre.core.runtime import Runtime, setup_runtime
from repre.data.sources import pretraining_stats
from repre.errors import UserError
from repre.methods import eval_encoder_key
from repre.models.backbone import Backbone


def load_checkpoint_config(checkpoint: str | Path, overrides: list[str] | None = None) -> tuple[dict, Config]:
    """A checkpoint and its config with `overrides` applied. Whatever data `overrides` point at, the images are
    normalized as the encoder pre-trained (`data.mean` and `data.std` set to its statistics), unless they set
    `data.mean` and `data.std` themselves: another dataset's statistics would shift every feature."""
    ckpt = ckpt_io.load(checkpoint)
    raw = migrate(ckpt["config"])  # in today's keys (a checkpoint of an older repre), before the overrides
    given = parse_overrides(overrides or [])
    if not {"mean", "std"} & set(given.get("data", {})):
        data = raw.get("data", {})  # its name and statistics alone decide (pretraining_stats)
        mean, std = pretraining_stats(DataConfig(name=data.get("name", "fashion-mnist"), mean=data.get("mean"),
                                                 std=data.get("std")))
        raw.setdefault("data", {}).update(mean=list(mean), std=list(std))
    deep_update(raw, given)
    return ckpt, config_from_dict(raw)


def _load_into(module: nn.Module, state: dict, checkpoint: str | Path, what: str) -> None:
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
        problem = f"{len(missing)} missing and {len(unexpected)} unexpected weights" if missing or unexpected else ""
    except RuntimeError as exc:  # shape mismatches
        problem = ckpt_io.size_mismatch(exc)
    if problem or not state:
        raise UserError(
            f"checkpoint {checkpoint} does not match the {what} of the config used to evaluate it "
            f"({problem or 'no weights'}); drop --set overrides of model.*, recon.* or data.image_size, or pick the "
            "right checkpoint"
        )


def encoder_from(ckpt: dict, cfg: Config, checkpoint: str | Path, key: str | None = None) -> Backbone:
    """Encoder `key` of a loaded checkpoint (default: the evaluated one, the online encoder or DINO's teacher)."""
    encoder = build_encoder(cfg)
    key = key or eval_encoder_key(cfg.method.name)
    _load_into(encoder.model, ckpt_io.encoder_state(ckpt, key), checkpoint, f"encoder {cfg.model.arch}")
    return encoder


def load_encoder(checkpoint: str | Path, overrides: list[str] | None = None) -> tuple[Backbone, Config]:
    """The evaluated encoder of a checkpoint (the online one; DINO's teacher) and its config with `overrides`."""
    ckpt, cfg = load_checkpoint_config(checkpoint, overrides)
    return encoder_from(ckpt, cfg, checkpoint), cfg


def model_from(ckpt: dict, cfg: Config, checkpoint: str | Path) -> nn.Module:
    """The whole pre-training model of a loaded checkpoint, built from `cfg` (`checkpoint` names it in errors)."""
    head = ckpt["model"].get("method.head.weight")  # supervised checkpoints carry their class count
    model = build_model(cfg, None if head is None else head.shape[0])
    _load_into(model, ckpt["model"], checkpoint, "model")
    return model


# what evaluating, embedding or drawing a checkpoint reads besides the data and the encoder's keys: the run
# settings below (the other train.* keys are the pre-training's) and method.name (which encoder is evaluated)
RUN_KEYS_READ = ("method.name", *(f"train.{k}" for k in ("device", "precision", "seed", "num_workers", "progress")))


def eval_reads(task: str) -> tuple[str, ...]:
    """The config keys (prefixes) evaluation `task` reads: its own, the data's, the encoder's and the run's."""
    reads = ("eval.", "data.", "model.", *RUN_KEYS_READ)
    if task == "finetune":  # its crops' aspect ratios and flips (the linear probes fix their own; no jitter)
        reads += ("aug.crop_ratio", "aug.hflip")
    if task == "recon":  # the whole pre-training model, decoder included
        reads += ("recon.", "method.")
    return reads


def refuse_unread(command: str, overrides: list[str], reads: tuple[str, ...]) -> None:
    """A UserError naming the `--set` keys that `command` does not read (they would change nothing silently).
    Keys that are no config key at all are left to the config's own error, which names the nearest."""
    known = flatten(Config().to_dict())
    unread = [k for k in flatten(parse_overrides(overrides)) if k in known and not k.startswith(reads)]
    if unread:
        named = ", ".join(r + "*" if r.endswith(".") else r for r in reads)
        raise UserError(f"--set {', '.join(unread)}: not read by `{command}` (it would change nothing); it reads "
                        f"{named}: drop the others")


def encoder_tasks() -> dict[str, Callable[[Backbone, Config, Runtime], dict[str, Any]]]:
    """Evaluations of a frozen or fine-tuned encoder: task -> fn(encoder, cfg, rt) -> result dict."""
    from repre.eval.finetune import finetune_eval
    from repre.eval.knn import knn_eval
    from repre.eval.linear import linear_eval
    from repre.eval.segment import segment_eval

    return {"knn": knn_eval, "linear": linear_eval, "finetune": finetune_eval, "segment": segment_eval}


def evaluate(
    task: str, checkpoint: str | Path, overrides: list[str] | None = None, out: str | Path | None = None
) -> dict[str, Any]:
    """Run evaluation `task` on a checkpoint or run directory -> {"task", "metric", "value", "extra",
    "checkpoint"} ("checkpoint": which file, step and encoder were evaluated, with which `overrides`);
    pictures go to `out`, and the linear probe's checkpoint (protocols mocov3, dino and moby). Under torchrun every
    process calls it: the linear probe's protocols share the work, the other tasks run whole in each process."""
    if task not in EVAL_TASKS:
        raise UserError(f"unknown evaluation {task!r}; choose from {', '.join(EVAL_TASKS)}")
    refuse_unread(f"repre eval {task}", list(overrides or []), eval_reads(task))
    ckpt, cfg = load_checkpoint_config(checkpoint, overrides)
    encoder_key = "encoder" if task == "recon" else eval_encoder_key(cfg.method.name)  # the decoder's: online
    evaluated = {"file": str(ckpt_io.checkpoint_file(checkpoint)), "step": int(ckpt.get("step", 0)),
                 "encoder": encoder_key, "set": list(overrides or [])}
    if task == "recon":
        from repre.eval.recon import recon_eval

        rt = setup_runtime(cfg.train)
        model = model_from(ckpt, cfg, checkpoint).to(rt.device)
        return {**recon_eval(model, cfg, rt, Path(out) if out else None), "checkpoint": evaluated}
    joins = dist.launched() and not dist.is_distributed()  # under torchrun: join the group, leave it after
    try:
        rt = setup_runtime(cfg.train)
        rt = dataclasses.replace(rt, device=dist.init_from_env(rt.device))
        with seeded(cfg.train.seed, rt):  # building the encoder, new heads, drop path: the same result every time
            encoder = encoder_from(ckpt, cfg, checkpoint).to(rt.device)
            if task == "linear":  # the papers' protocols keep a resumable checkpoint in `out`
                result = encoder_tasks()[task](encoder, cfg, rt, Path(out) if out else None)
            else:
                result = encoder_tasks()[task](encoder, cfg, rt)
        return {**result, "checkpoint": evaluated}
    finally:
        if joins:
            dist.shutdown()


@contextlib.contextmanager
def seeded(seed: int, rt: Runtime) -> Iterator[None]:
    """Run a block from a fixed global RNG state (CPU and the CUDA device), restoring the caller's after."""
    devices = [rt.device.index or 0] if rt.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
